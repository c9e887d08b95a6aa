"""Turn a ``pytest benchmarks/ --benchmark-only --benchmark-json=R.json`` file into a Markdown table
and a PNG chart (speed-up and memory per provider and case).

    python -m benchmarks.report R.json [MORE.json ...] [--out-dir DIR]   # DIR/results.md, DIR/results.png
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = [  # (header, extra_info key, format)
    ("level", "level", "{}"), ("case", "case", "{}"), ("mode", "mode", "{}"), ("dtype", "dtype", "{}"),
    ("provider", "provider", "{}"), ("median ms", "median_ms", "{:.3f}"), ("wall ms", "wall_ms", "{:.3f}"),
    ("graph ms", "graph_ms", "{:.3f}"),
    ("x vs ref", "speedup_vs_reference", "{:.2f}"), ("x vs ref compiled", "speedup_vs_reference_compiled", "{:.2f}"),
    ("graph x vs ref", "graph_speedup_vs_reference", "{:.2f}"),
    ("peak MiB", "peak_mem_mb", "{:.0f}"), ("mem / ref", "mem_ratio_vs_reference", "{:.2f}"),
    ("saved act. MiB", "saved_activation_mb", "{:.0f}"), ("mem / ST-Adapter", "mem_ratio_vs_st_adapter", "{:.3f}"),
    ("clips/s", "clips_per_s", "{:.1f}"), ("GB/s", "achieved_gbps", "{:.0f}"), ("of copy BW", "bw_fraction", "{:.0%}"),
    ("floor ms", "floor_ms", "{:.3f}"), ("of floor", "floor_fraction", "{:.0%}"),
]


def load_rows(path: Path) -> tuple[list[dict], dict]:
    try:
        data = json.loads(path.read_text())
        rows = [b["extra_info"] for b in data["benchmarks"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a pytest-benchmark JSON file ({e})")
    rows = [r for r in rows if "provider" in r]
    if not rows:
        raise SystemExit(f"{path}: no benchmark rows with stadapter-fast extra_info")
    return rows, data.get("machine_info", {})


def json_arguments(description: str) -> argparse.ArgumentParser:
    """A command line taking one or more pytest-benchmark JSON files (``json``), whose rows
    :func:`load_all` merges."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("json", type=Path, nargs="+", help="one or more --benchmark-json files (rows are merged)")
    return ap


def load_all(paths: list[Path]) -> list[dict]:
    return [r for path in paths for r in load_rows(path)[0]]


def _fmt(v, f):
    return "" if v is None else f.format(v)


def markdown(rows: list[dict]) -> str:
    rows = sorted(rows, key=lambda r: (r["level"], r["case"], r["mode"], r["dtype"], r["provider"]))
    first = next((r for r in rows if r.get("copy_gbps_device")), rows[0])
    out = [f"device: {first.get('device')}; torch {first.get('torch')}; triton {first.get('triton')}; "
           f"measured copy bandwidth {first.get('copy_gbps_device', 0):.0f} GB/s, "
           f"matmul {first.get('matmul_tflops_device', 0):.1f} TFLOP/s", "",
           f"median ms: {first.get('timing') or 'median per call'} (speed-ups use it); wall ms: eager calls "
           f"back to back, host clock; graph ms: one call as a CUDA graph, replays timed with events.", "",
           "| " + " | ".join(h for h, _, _ in COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
    for r in rows:
        out.append("| " + " | ".join(_fmt(r.get(k), f) for _, k, f in COLUMNS) + " |")
    return "\n".join(out) + "\n"


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("speedup_vs_reference") is not None]  # loader rows: table only
    if not rows:
        return
    groups = sorted({(r["level"], r["case"], r["mode"], r["dtype"]) for r in rows})
    providers = [p for p in ("reference", "reference_compiled", "reference_channels_last", "fast",
                             "fast_compiled", "fast_torch_compiled") if any(r["provider"] == p for r in rows)]
    providers += sorted({r["provider"] for r in rows} - set(providers))
    table = defaultdict(dict)
    for r in rows:
        table[(r["level"], r["case"], r["mode"], r["dtype"])][r["provider"]] = r
    metrics = [("speedup_vs_reference", "speed-up vs reference (x)")]
    if any(r.get("mem_ratio_vs_reference") for r in rows):
        metrics.append(("mem_ratio_vs_reference", "peak memory / reference"))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(8, 0.55 * len(groups) * len(providers) / 2), 4.5 * len(metrics)),
                             squeeze=False)
    width = 0.8 / len(providers)
    for ax, (key, label) in zip(axes[:, 0], metrics):
        for j, p in enumerate(providers):
            xs = [i + j * width for i in range(len(groups))]
            ys = [table[g].get(p, {}).get(key) or 0 for g in groups]
            ax.bar(xs, ys, width, label=p)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel(label)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
        ax.set_xticklabels([f"L{g[0]} {g[1]}\n{g[2]} {g[3]}" for g in groups], rotation=60, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(f"stadapter-fast on {rows[0].get('device')} (torch {rows[0].get('torch')}, triton {rows[0].get('triton')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = json_arguments(__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=None, help="default: beside the JSON file")
    args = ap.parse_args(argv)
    rows = load_all(args.json)
    out = args.out_dir or args.json[0].parent
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(rows))
    chart(rows, out / "results.png")
    print(f"wrote {out / 'results.md'} and {out / 'results.png'} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
