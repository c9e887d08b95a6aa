"""Every kernel variant compiles ahead of time for sm_90 (Hopper) and sm_80 (Ampere), no GPU needed."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


ARCHS = [90, 80]


@pytest.fixture(scope="module")
def aot_results(request, tmp_path_factory):
    """Compile for every selected arch at once, one process per arch (the compiles are single-threaded:
    on 2 cores both archs take about the time of one). Output goes to files: no pipe can fill up."""
    pytest.importorskip("triton")
    selected = sorted({item.callspec.params["arch"] for item in request.session.items
                       if getattr(item, "originalname", None) == "test_aot_compile_all_variants"})
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    logs = tmp_path_factory.mktemp("aot")
    procs = {}
    for arch in selected:
        out, err = open(logs / f"{arch}.out", "w"), open(logs / f"{arch}.err", "w")
        procs[arch] = (subprocess.Popen([sys.executable, str(ROOT / "tests/csrc_triton/aot_compile.py"), str(arch)],
                                        env=env, cwd=ROOT, stdout=out, stderr=err, text=True), out, err)
    results = {}
    for arch, (proc, out, err) in procs.items():
        rc = proc.wait(timeout=900)
        out.close()
        err.close()
        results[arch] = (rc, (logs / f"{arch}.out").read_text(), (logs / f"{arch}.err").read_text())
    return results


@pytest.mark.parametrize("arch", ARCHS)
def test_aot_compile_all_variants(arch, aot_results):
    rc, stdout, stderr = aot_results[arch]
    assert rc == 0, stdout[-3000:] + stderr[-3000:]
    assert "variants compiled" in stdout
    # vectorised global loads: the kernels read whole channel rows, not scalars
    assert "vector_loads=0" not in stdout, stdout
    # the one-pass kernels' fp16/bf16 dots run on tensor cores (wgmma on Hopper at 64+-row tiles)
    for line in stdout.splitlines():
        if "onepass" in line and ("bf16" in line or "fp16" in line):
            assert "mma_sync=True" in line or "wgmma=True" in line, line
            if arch == 90 and "onepass-bwd-bf16-none-k311" in line:
                assert "wgmma=True" in line, line
