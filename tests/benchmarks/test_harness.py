"""The benchmark harness's timing API and the first-step script, on CPU (their CUDA paths, events,
the L2 flush and graph capture, are checked by tests/test_gpu.py on a GPU)."""
import json
import time

import pytest

from benchmarks import _harness as harness


def test_measure_reports_device_wall_and_why_no_graph():
    calls = []

    def fn(i):
        calls.append(i)
        time.sleep(0.002)

    t = harness.measure(fn, warmup=2, rounds=5)
    assert calls[:2] == [0, 1] and len(calls) == 2 + 5 + 5  # warm-up, per-call timing, back-to-back
    assert 0.002 <= t.device_s < 0.1 and 0.002 <= t.wall_s < 0.1
    assert t.graph_s is None and t.graph_error == "CUDA graphs need a GPU"
    info = t.info()
    assert info["median_ms"] == info["device_ms"] == t.device_s * 1e3 and info["graph_ms"] is None
    assert harness.measure(fn, 0, 1, graph=False).graph_error == "not requested"


def test_first_step_script_reports_each_step(tmp_path, monkeypatch):
    from benchmarks.first_step import main

    cache = tmp_path / "triton-cache"
    (cache / "ab12").mkdir(parents=True)
    for name in ("dwconv_fwd.autotune.json", "dwconv_fwd.cubin", "dwconv_fwd.json"):
        (cache / "ab12" / name).write_text("{}")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache))
    monkeypatch.delenv("TRITON_CACHE_AUTOTUNING", raising=False)
    out = tmp_path / "first.json"
    res = main(["--steps", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == [res] and res["run"] == "fast"
    assert res["triton_cache_files_before"] == 3 and res["autotune_files_before"] == 1
    assert res["autotune_disk_cache"] is False  # TRITON_CACHE_AUTOTUNING unset
    monkeypatch.setenv("TRITON_CACHE_AUTOTUNING", "1")
    again = main(["--steps", "1", "--label", "fast_cached", "--out", str(out)])
    assert again["autotune_disk_cache"] is True and again["run"] == "fast_cached"
    assert json.loads(out.read_text()) == [res, again]  # runs append to one list
    out.write_text("{}")
    with pytest.raises(ValueError, match=r"--out: expected .*first.json to hold a JSON list of runs, got dict"):
        main(["--steps", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == {}  # the file is left as it was
    assert len(res["step_s"]) == 2 and all(s > 0 for s in res["step_s"])
    assert res["first_minus_steady_s"] == res["step_s"][0] - res["step_s"][1]
    assert res["provider"] == "fast" and res["torch"] and res["autotuned_keys"] == {}  # nothing tunes on CPU
    assert res["stopped"] is None


def test_first_step_stopped_by_a_time_limit_still_reports(tmp_path, monkeypatch):
    """run_gpu.sh runs each first-step process under `timeout`: a SIGTERM in a step ends the run, which
    still appends what it measured and says where it stopped (a lower bound for that step)."""
    import os
    import signal

    from benchmarks import first_step

    def build(*args):
        def step(i):
            if i == 1:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler interrupts this
        return step, None

    monkeypatch.setattr(first_step, "build_model_step", build)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "first.json"
    t = time.perf_counter()
    res = first_step.main(["--steps", "3", "--out", str(out)])
    assert time.perf_counter() - t < 4
    assert len(res["step_s"]) == 1 and res["first_minus_steady_s"] is None
    assert res["stopped"].startswith("SIGTERM in step 2, ") and json.loads(out.read_text()) == [res]
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_a_compiled_row_past_the_recompile_limit_fails_rather_than_runs_eagerly():
    """Without strict_dynamo, dynamo runs a function past its recompile limit eagerly with a warning only:
    a *_compiled row would time eager code."""
    import torch

    config = torch._dynamo.config
    with config.patch(recompile_limit=config.recompile_limit, fail_on_recompile_limit_hit=False):  # put back after
        harness.strict_dynamo()
        assert config.recompile_limit == 64
        harness.strict_dynamo(recompile_limit=1)
        assert config.recompile_limit == 1 and config.fail_on_recompile_limit_hit
        f = torch.compile(lambda x: x * 2, backend="eager", dynamic=False)
        f(torch.ones(2))
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
            f(torch.ones(2, dtype=torch.float64))  # a second guard set: one past the limit
