"""benchmarks/targets.py: issue 11's targets and the auto-path choice from a GPU run's rows (made-up
rows with the GPU suite's case names here), and the same tool on the committed CPU run."""
import json
from pathlib import Path

from benchmarks import targets

ROOT = Path(__file__).resolve().parents[2]


def _row(level, case, mode, provider, dtype="bfloat16", **info):
    return {"level": level, "case": case, "mode": mode, "provider": provider, "dtype": dtype, "device": "NVIDIA H200",
            "torch": "2.11.0", "triton": "3.6.0", **info}


def _write(path, rows):
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": [{"extra_info": r} for r in rows]}))
    return path


def _lines(text):
    """{target: (measured, met)} from the targets table."""
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0] in {t.what for t in targets.TARGETS}:
            out[cells[0]] = (cells[2], cells[3])
    return out


def test_targets_and_auto_path_from_rows_of_two_phases(tmp_path, capsys):
    adapter = (2, "vitb16_8f/k311", "fwd_bwd")
    phase_a = [
        _row(1, "vitb16_8f/k311", "fwd", "fast", bw_fraction=0.85),
        _row(1, "vitb16_8f/k311", "fwd_bwd", "fast", bw_fraction=0.55),
        _row(*adapter, "reference", median_ms=6.0),
        _row(*adapter, "fast", median_ms=1.0, floor_ms=0.8),
        _row(*adapter, "fast_onepass", median_ms=0.9, floor_ms=0.8),
        _row(*adapter, "fast", dtype="float16", median_ms=100.0),  # another dtype: not read
        _row(3, "vitb16_8f_12x384", "train_step", "reference", median_ms=14.0),
        _row(3, "vitb16_8f_12x384", "train_step", "fast", median_ms=10.0),
        _row(3, "vitb16_8f_24x384", "train_step", "fast", median_ms=20.0),  # its reference row is missing
    ]
    phase_k = [_row(*adapter, "reference_compiled", median_ms=1.5),
               _row(*adapter, "fast_torch_compiled", median_ms=1.4)]
    # path="auto": two_pass (fast) vs one_pass (fast_onepass) per shape; a 1% difference is a tie
    times = {("vitb16_16f", "k311"): (1.0, 0.99), ("vitl14_8f", "k311"): (1.0, 0.95),
             ("vitb16_8f", "k333relu"): (1.0, 1.1), ("vitb16_16f", "k333relu"): (2.0, 1.9),
             ("vitb16_32f", "k333relu"): (1.0, 1.2)}
    phase_b = [_row(2, f"{s}/{v}", "fwd_bwd", p, median_ms=t) for (s, v), pair in times.items()
               for p, t in zip(("fast", "fast_onepass"), pair)]
    phase_b.append(_row(2, "vitb16_8f/mmaction2_k333relu", "fwd_bwd", "fast_onepass", median_ms=0.01))  # not a class
    files = [_write(tmp_path / f"phase_{n}.json", rows) for n, rows in (("A", phase_a), ("K", phase_k), ("B", phase_b))]

    assert targets.main([str(f) for f in files]) == 0
    text = (tmp_path / "targets.md").read_text()
    assert text in capsys.readouterr().out
    got = _lines(text)
    assert got == {
        "conv op fwd: fraction of the copy bandwidth": ("85%", "yes"),
        "conv op fwd+bwd: fraction of the copy bandwidth": ("55%", "**no**"),
        "adapter fwd+bwd (two_pass) vs reference": ("6.00x", "yes"),
        "adapter fwd+bwd (two_pass) vs reference_compiled": ("1.50x", "**no**"),
        "adapter fwd+bwd (two_pass) vs fast_torch_compiled": ("1.40x", "yes"),
        "adapter fwd+bwd (two_pass): time / roofline floor": ("1.25x", "yes"),
        "adapter fwd+bwd (one_pass) vs reference": ("6.67x", "yes"),
        "adapter fwd+bwd (one_pass) vs reference_compiled": ("1.67x", "**no**"),
        "adapter fwd+bwd (one_pass) vs fast_torch_compiled": ("1.56x", "yes"),
        "adapter fwd+bwd (one_pass): time / roofline floor": ("1.12x", "yes"),
        "model train step 12x384 (two_pass) vs reference": ("1.40x", "yes"),
        "model train step 12x384 (one_pass) vs reference": ("(no row 3/vitb16_8f_12x384/train_step/fast_onepass)", "-"),
        "model train step 24x384 (two_pass) vs reference": ("(no row 3/vitb16_8f_24x384/train_step/reference)", "-"),
        "model train step 24x384 (one_pass) vs reference": ("(no row 3/vitb16_8f_24x384/train_step/fast_onepass)", "-"),
    }
    assert "device: NVIDIA H200; torch 2.11.0; triton 3.6.0" in text
    # temporal: one_pass faster at vitb16_8f (0.9) and vitl14_8f (0.95), a tie at vitb16_16f (0.99)
    # spatial: two_pass faster at 2 shapes of 3
    assert "- temporal: `one_pass`" in text and "- spatial: `two_pass`" in text
    assert "| temporal | vitl14_8f | 1.000 | 0.950 | 0.95 |" in text
    assert "mmaction2" not in text


def test_a_row_timed_twice_is_named_and_the_later_one_used(tmp_path):
    adapter = (2, "vitb16_8f/k311", "fwd_bwd")
    rows = [_row(*adapter, "reference", median_ms=6.0), _row(*adapter, "fast", median_ms=2.0),
            _row(*adapter, "fast", median_ms=1.0)]
    text = targets.render(rows)
    assert _lines(text)["adapter fwd+bwd (two_pass) vs reference"] == ("6.00x", "yes")
    assert "- 2/vitb16_8f/k311/fwd_bwd/fast was timed twice; the later row is used" in text


def test_runs_on_the_committed_cpu_results(tmp_path):
    """The CPU run has none of the GPU shapes: every target says which row it lacks, and the auto
    table holds the CPU shape's rows."""
    out = tmp_path / "t.md"
    assert targets.main([str(ROOT / "benchmarks/results/cpu/cpu.json"), "--out", str(out)]) == 0
    text = out.read_text()
    assert all(v == "-" for _, v in _lines(text).values()) and len(_lines(text)) == len(targets.TARGETS)
    assert "| temporal | cpu_small |" in text and "| spatial | cpu_small |" in text
