"""benchmarks/conftest.py's stop on a phase limit: run_gpu.sh's `timeout` sends SIGTERM, and the
benchmark session keeps the JSON of the rows it finished. (Its own file, so that pytest-xdist's
loadfile runs it beside the benchmark-suite smoke run rather than after it.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench_until(out, rows_done: int):
    """A CPU benchmark run of the conv rows (16), stopped once ``rows_done`` rows have passed: the
    process and what it printed so far."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("PYTEST_XDIST")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "benchmarks/test_bench_conv.py", "--benchmark-only", "-q",
                             "-p", "no:cacheprovider", "-p", "no:xdist", f"--benchmark-json={out}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    while seen.count(".") < rows_done:  # the progress line: a "." per row passed
        ch = proc.stdout.read(1)
        assert ch, seen[-3000:]
        seen += ch
    return proc, seen


@pytest.mark.parametrize("signals", [1, 2], ids=["sigterm", "sigterm_twice"])
def test_a_phase_stopped_by_its_time_limit_keeps_the_rows_done(tmp_path, signals):
    """run_gpu.sh's phase limits send SIGTERM (`timeout`): the session stops after the row under way
    and pytest-benchmark writes the JSON of the rows done. A second SIGTERM interrupts that row (as
    Ctrl-C does, maybe in its warm-up with no rounds yet): it is left out, the rows before it kept."""
    import signal
    import time

    out = tmp_path / "phase.json"
    proc, seen = _bench_until(out, 2)
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    rest = proc.communicate(timeout=120)[0]
    # 2: pytest's "interrupted". An interrupt lands anywhere, pytest's own report of it included (which
    # then fails: exit 1, or -2 for a KeyboardInterrupt out of pytest); the JSON is written before.
    assert proc.returncode == 2 if signals == 1 else proc.returncode in (1, 2, -2), (seen + rest)[-3000:]
    rows = json.loads(out.read_text())["benchmarks"]
    # the signal may come in the second row's teardown (then that is the row under way) or in the third
    assert 2 <= len(rows) <= 3, [r["name"] for r in rows]
    assert all(r["extra_info"]["median_ms"] > 0 for r in rows)  # only whole rows
