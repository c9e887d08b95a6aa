"""Packaging: the sdist and wheel hold the two packages and nothing of the repository's tests, benchmarks
or data; the wheel installs into a fresh venv with only its own dependencies and runs there; without
triton, stadapter_fast imports and runs the PyTorch path, and backend="triton" is a clear error.

The fresh-venv test installs the running torch (the Makefile's pinned CPU build) and triton from the
same package sources as `make venv` (the machine's pip configuration is inherited), so on CI pip finds
in its cache what `make venv` fetched in the same run. Measured on the 2-core CPU machine, others'
work loading it (load average 2-3): ~2 s to build both archives, ~6 s for the venv, 16-29 s for the
install (--no-compile: byte-compiling all of torch made it 56 s, 33 s of CPU against 13 s), ~20 s of
checks (four interpreters importing torch); 54 s for the whole test.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Repository folders that must never reach an archive, and what the copy of the tree leaves out
# (virtualenvs, caches, earlier build outputs): the build sees what a fresh clone has.
NOT_PACKAGED = ("tests", "benchmarks", "data", "runs")
_IGNORE_ANYWHERE = shutil.ignore_patterns(".git", ".venv*", ".pytest_cache", ".hypothesis", ".benchmarks",
                                          "__pycache__", "*.egg-info")


def _copy_ignore(folder, names):
    """Left out of the copy: caches and virtualenvs anywhere; the root's build outputs and (often large)
    data/runs, which _build recreates with a dummy file; the GPU machine's packed dependencies
    (.gpu-deps, ~0.5 GB where packed). stadapter_fast/data is a package: kept."""
    ignored = set(_IGNORE_ANYWHERE(folder, names))
    if Path(folder).resolve() == ROOT:
        ignored |= {"build", "dist", ".whl", ".gpu-deps", "data", "runs"} & set(names)
    return ignored


# Packages of the extras (test, models, hf, data, bench): none may be needed to import or run the core.
EXTRA_MODULES = ("pytest", "hypothesis", "timm", "open_clip", "transformers", "av", "matplotlib",
                 "pytest_benchmark", "xdist")

# Run in a child interpreter (cwd outside the repository, so the installed copy is the one imported):
# every stadapter_fast module imports, FastSTAdapter runs on CPU with backend "torch" and "auto", and
# without triton backend="triton" raises the ValueError that says what works instead.
_CHECK = textwrap.dedent("""
    import importlib, importlib.util, json, pkgutil, sys
    expect_triton = sys.argv[1] == "1"
    if sys.argv[2] == "1":
        sys.modules["triton"] = None   # blocks `import triton`; find_spec("triton") returns None
    import torch
    import stadapter_fast
    from stadapter_fast import FastSTAdapter
    from stadapter_fast._backend import triton_available
    failed = {}
    for m in pkgutil.walk_packages(stadapter_fast.__path__, "stadapter_fast."):
        try:
            importlib.import_module(m.name)
        except Exception as e:
            failed[m.name] = repr(e)
    assert not failed, f"modules that do not import here: {failed}"
    assert triton_available() is expect_triton, (triton_available(), expect_triton)
    torch.manual_seed(0)
    m = FastSTAdapter(in_channels=16, adapter_channels=8, kernel_size=(3, 1, 1), num_prefix_tokens=1,
                      backend="torch")
    for p in m.parameters():   # the release's zero init makes a fresh adapter the identity
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2 * 4, 1 + 9, 16)
    y = m(x, 4)
    m.backend = "auto"
    y_auto = m(x, 4)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(y, x)
    assert torch.equal(y, y_auto), "backend='auto' on CPU is not the PyTorch path"
    error = None
    if not expect_triton:
        m.backend = "triton"
        try:
            m(x, 4)
        except ValueError as e:
            error = str(e)
    # the activation table and the accumulation-dtype rule are plain Python (no Triton); the rest define kernels
    kernels = sorted(k for k in sys.modules if k.startswith("csrc_triton.") and sys.modules[k] is not None
                     and k not in ("csrc_triton.activations", "csrc_triton.dtypes"))
    kernels += sorted(k for k in sys.modules if k.split(".")[0] == "triton" and sys.modules[k] is not None)
    extras = [n for n in sys.argv[3].split(",") if importlib.util.find_spec(n) is not None]
    print(json.dumps({"file": stadapter_fast.__file__, "error": error, "kernels": kernels,
                      "extras_importable": extras}))
""")


def _child_env() -> dict:
    """This environment (the pip configuration included) minus what would leak the dev venv or the test
    suite's Triton interpreter into the child."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_CONSTRAINT", "TRITON_INTERPRET",
                        "PYTEST_XDIST_WORKER", "PYTEST_CURRENT_TEST")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _venv_env() -> dict:
    """_child_env for the fresh venv's interpreters, which may write .pyc files there: torch is installed
    with --no-compile, and re-parsing its sources in every child cost ~2 s per `import stadapter_fast`
    (4.0 s vs 2.1 s with them written by the first child)."""
    env = _child_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _run(cmd, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or _child_env(), capture_output=True,
                          text=True, timeout=timeout)


def _check(python, cwd, expect_triton: bool, block_triton: bool, env=None) -> dict:
    r = _run([python, "-c", _CHECK, int(expect_triton), int(block_triton), ",".join(EXTRA_MODULES)], cwd,
             env=env)
    assert r.returncode == 0, f"check failed in {python}:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _assert_triton_error(out: dict) -> None:
    msg = out["error"]
    assert msg is not None, "backend='triton' without triton did not raise ValueError"
    assert "needs the `triton` package" in msg and "not installed" in msg, msg
    assert "backend='torch'" in msg and "backend='auto'" in msg, msg
    assert out["kernels"] == [], f"Triton kernel modules imported without triton: {out['kernels']}"


def test_import_and_run_without_triton(tmp_path):
    """The source tree with `import triton` blocked: every module imports, the PyTorch path runs."""
    env = _child_env()
    env["PYTHONPATH"] = str(ROOT)
    out = _check(sys.executable, tmp_path, expect_triton=False, block_triton=True, env=env)
    assert Path(out["file"]).resolve().is_relative_to(ROOT)
    _assert_triton_error(out)


def test_triton_missing_message_names_the_platform(monkeypatch):
    from stadapter_fast import _backend

    monkeypatch.setattr(sys, "platform", "darwin")
    msg = _backend.triton_missing_message()
    assert "Linux only" in msg and "'darwin'" in msg and "backend='torch'" in msg, msg
    monkeypatch.setattr(sys, "platform", "linux")
    assert "pip install triton" in _backend.triton_missing_message()
    monkeypatch.setattr(_backend, "triton_available", lambda: False)
    with pytest.raises(ValueError, match=r"needs the `triton` package.*backend='torch'"):
        _backend.resolve_backend("triton", torch.device("cpu"))
    assert _backend.resolve_backend("auto", torch.device("cpu")) == "torch"


def _build(tmp_path) -> tuple[Path, Path]:
    """sdist and wheel from a copy of the tree (the wheel is built from the sdist, so a file the sdist
    misses fails the build), with dummy files in the folders that must stay out."""
    src = tmp_path / "src"
    try:
        shutil.copytree(ROOT, src, ignore=_copy_ignore)
    except shutil.Error as e:   # a file another test (same xdist run) removed mid-copy is no error here
        vanished = [err for err in e.args[0] if not os.path.lexists(err[0])]
        if len(vanished) < len(e.args[0]):
            raise
    for d in ("data", "runs"):
        (src / d).mkdir()
        (src / d / "clip.mp4").write_bytes(b"not packaged")
    dist = tmp_path / "dist"
    r = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, src], src)
    assert r.returncode == 0, f"python -m build failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    # e.g. setuptools' "`project.license` as a TOML table is deprecated" (an error from 2027-02-18 on)
    deprecations = re.findall(r"(?im)^.*(?:project\.|license).*deprecated.*$", r.stdout + r.stderr)
    assert not deprecations, deprecations
    (sdist,), (wheel,) = list(dist.glob("*.tar.gz")), list(dist.glob("*.whl"))
    return sdist, wheel


def _check_archives(sdist: Path, wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        top = {n.split("/")[0] for n in z.namelist()}
    assert top == {"stadapter_fast", "csrc_triton", re.sub(r"-py3.*", ".dist-info", wheel.name)}, top
    with tarfile.open(sdist) as t:
        names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
    top = {n.split("/")[0] for n in names}
    assert {"stadapter_fast", "csrc_triton", "README.md", "pyproject.toml", "PKG-INFO"} <= top, top
    assert not top & set(NOT_PACKAGED), f"sdist holds {top & set(NOT_PACKAGED)}"
    for f in ROOT.iterdir():   # licence-like files at the root, where there are any
        if re.match(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", f.name):
            assert f.name in top, f"{f.name} missing from the sdist"
    for pkg in ("stadapter_fast", "csrc_triton"):
        tracked = {p.relative_to(ROOT).as_posix() for p in (ROOT / pkg).rglob("*.py")}
        assert tracked <= set(names), f"sdist lacks {sorted(tracked - set(names))}"


def _pip_failure(r: subprocess.CompletedProcess, what: str):
    out = (r.stdout + r.stderr)[-4000:]
    offline = re.search(r"NewConnectionError|Failed to establish a new connection|Temporary failure in name "
                        r"resolution|No matching distribution found|Could not find a version", out)
    if offline and not ON_CI:
        pytest.skip(f"{what}: no package index reachable here (CI=true makes this a failure):\n{out}")
    pytest.fail(f"{what} failed:\n{out}")


@pytest.mark.slow
def test_wheel_installs_and_runs_in_a_clean_venv(tmp_path):
    if torch.version.cuda:
        # The fresh venv gets the running torch: a CUDA build brings ~2.5 GB of nvidia-* wheels. The
        # current row (CPU torch, `make test`) runs this test; nothing in it is version-specific.
        pytest.skip(f"torch {torch.__version__} is a CUDA build; the CPU-torch row runs this test")
    sdist, wheel = _build(tmp_path)
    _check_archives(sdist, wheel)

    venv = tmp_path / "venv"
    r = _run([sys.executable, "-m", "venv", venv], tmp_path)
    assert r.returncode == 0, r.stderr
    py, bin_ = venv / "bin" / "python", venv / "bin"
    # The running torch (the CPU build `make venv` pinned; a looser pin resolves to PyPI's CUDA build)
    # and triton: the same files `make venv` fetched, so nothing new is downloaded.
    pins = [f"torch=={torch.__version__}"]
    try:
        import triton

        pins.append(f"triton=={triton.__version__}")
    except ImportError:
        pass
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    env = _venv_env()
    env["PIP_CONSTRAINT"] = str(constraints)
    r = _run([py, "-m", "pip", "install", "-q", "--no-compile", wheel], tmp_path, env=env, timeout=540)
    if r.returncode != 0:
        _pip_failure(r, f"pip install {wheel.name}")
    r = _run([py, "-m", "pip", "check"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr

    on_linux = sys.platform.startswith("linux")
    out = _check(py, tmp_path, expect_triton=on_linux, block_triton=False, env=_venv_env())
    assert Path(out["file"]).resolve().is_relative_to(venv.resolve()), out["file"]
    assert out["extras_importable"] == [], f"the plain install brought extras: {out['extras_importable']}"
    for script in ("stadapter-train", "stadapter-make-synthetic"):
        r = _run([bin_ / script, "--help"], tmp_path, env=_venv_env())
        assert r.returncode == 0 and "usage:" in r.stdout, f"{script} --help:\n{r.stdout}\n{r.stderr}"

    # A machine without triton (not Linux, or uninstalled): the same wheel, the PyTorch path.
    if on_linux:
        r = _run([py, "-m", "pip", "uninstall", "-y", "-q", "triton"], tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
    out = _check(py, tmp_path, expect_triton=False, block_triton=False, env=_venv_env())
    _assert_triton_error(out)
