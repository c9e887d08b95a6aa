"""Issue 11's targets and the ``path="auto"`` choice, read off the benchmark rows of a GPU run.

    python -m benchmarks.targets phase_A.json phase_K.json ... [--out DIR/targets.md]

Each target compares rows by their device time (``median_ms``), across phases where its rows were
timed in different ones (e.g. ``fast`` in phase A, ``fast_torch_compiled`` in K: the same machine and
visit, each row timed by CUDA events). A target whose rows are missing says which. The ``auto`` table
lists, per shape class of :data:`stadapter_fast._backend.AUTO_PATH`, the two-pass vs one-pass device
time at every shape that ran, and the path faster (by more than ``TIE``) at more of them than the
other: what ``AUTO_PATH`` should then say.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from benchmarks.report import json_arguments, load_all

#: the headline case (bf16, the ViT-B/16 8-frame shape, the release's (3, 1, 1) adapter)
HEADLINE, DTYPE = "vitb16_8f", "bfloat16"
#: the two paths the library has (providers of the adapter level)
PATH_PROVIDERS = {"two_pass": "fast", "one_pass": "fast_onepass"}
#: AUTO_PATH's shape classes by the benchmark's kernel variants (benchmarks/_cases.py: VARIANTS)
SHAPE_CLASSES = {"temporal": "k311", "spatial": "k333relu"}
#: a shape where the two paths' times differ by less than this fraction counts for neither
TIE = 0.02


@dataclass(frozen=True)
class Target:
    what: str
    threshold: float
    higher_is_better: bool
    #: (level, case, mode, provider) of the row measured, and of the row it is divided by (None: the
    #: measured row's ``key`` field is the figure itself)
    row: tuple
    base: tuple | None = None
    key: str = "median_ms"


def _targets() -> list[Target]:
    adapter = (2, f"{HEADLINE}/k311", "fwd_bwd")
    out = [
        Target("conv op fwd: fraction of the copy bandwidth", 0.80, True,
               (1, f"{HEADLINE}/k311", "fwd", "fast"), key="bw_fraction"),
        Target("conv op fwd+bwd: fraction of the copy bandwidth", 0.60, True,
               (1, f"{HEADLINE}/k311", "fwd_bwd", "fast"), key="bw_fraction"),
    ]
    for path, provider in PATH_PROVIDERS.items():
        out += [
            Target(f"adapter fwd+bwd ({path}) vs reference", 5.0, True, (*adapter, provider), (*adapter, "reference")),
            Target(f"adapter fwd+bwd ({path}) vs reference_compiled", 2.0, True, (*adapter, provider),
                   (*adapter, "reference_compiled")),
            Target(f"adapter fwd+bwd ({path}) vs fast_torch_compiled", 1.3, True, (*adapter, provider),
                   (*adapter, "fast_torch_compiled")),
            Target(f"adapter fwd+bwd ({path}): time / roofline floor", 1.5, False, (*adapter, provider),
                   key="floor_ratio"),
        ]
    for config in ("12x384", "24x384"):
        for path, provider in PATH_PROVIDERS.items():
            step = (3, f"{HEADLINE}_{config}", "train_step")
            out.append(Target(f"model train step {config} ({path}) vs reference", 1.3, True, (*step, provider),
                              (*step, "reference")))
    return out


TARGETS = _targets()


def bound(threshold: float, higher_is_better: bool) -> str:
    """The wanted side of a threshold as text: ``">= 1.5"`` or ``"<= 0.6"``."""
    return f"{'>=' if higher_is_better else '<='} {threshold:g}"


def met(value: float, threshold: float, higher_is_better: bool) -> bool:
    """Whether ``value`` is on the wanted side of ``threshold`` (the threshold itself meets it)."""
    return value >= threshold if higher_is_better else value <= threshold


def index(rows: list[dict]) -> tuple[dict, list[str]]:
    """``{(level, case, mode, provider): row}`` of the bf16 rows, and a note per key timed twice (the
    later row is kept)."""
    out, notes = {}, []
    for r in rows:
        if r.get("dtype") != DTYPE:
            continue
        k = (r["level"], r["case"], r["mode"], r["provider"])
        if k in out:
            notes.append(f"{'/'.join(map(str, k))} was timed twice; the later row is used")
        out[k] = r
    return out, notes


def _figure(rows: dict, t: Target) -> tuple[float | None, str]:
    """(the figure, a note when it cannot be computed)."""
    r = rows.get(t.row)
    if r is None:
        return None, f"no row {'/'.join(map(str, t.row))}"
    if t.key == "floor_ratio":
        if not r.get("floor_ms") or not r.get("median_ms"):
            return None, "the row has no roofline floor"
        return r["median_ms"] / r["floor_ms"], ""
    if t.base is None:
        v = r.get(t.key)
        return (v, "") if v is not None else (None, f"the row has no {t.key}")
    b = rows.get(t.base)
    if b is None:
        return None, f"no row {'/'.join(map(str, t.base))}"
    return b["median_ms"] / r["median_ms"], ""


def targets_table(rows: dict) -> list[str]:
    out = ["| target | wanted | measured | met |", "|---|---|---|---|"]
    for t in TARGETS:
        v, note = _figure(rows, t)
        wanted = bound(t.threshold, t.higher_is_better)
        if v is None:
            out.append(f"| {t.what} | {wanted} | ({note}) | - |")
            continue
        shown = f"{v:.0%}" if t.key == "bw_fraction" else f"{v:.2f}x"
        verdict = "yes" if met(v, t.threshold, t.higher_is_better) else "**no**"
        out.append(f"| {t.what} | {wanted} | {shown} | {verdict} |")
    return out


def auto_path(rows: dict) -> tuple[list[str], dict]:
    """The two paths' adapter fwd+bwd device time per shape, per shape class; and the path faster (by
    more than ``TIE``) at more shapes of each class than the other (None: no such path)."""
    out = ["| shape class | shape | two_pass ms | one_pass ms | one_pass / two_pass time |", "|---|---|---|---|---|"]
    choice = {}
    for cls, variant in SHAPE_CLASSES.items():
        wins = {"two_pass": 0, "one_pass": 0}
        cases = sorted({k[1] for k in rows if k[0] == 2 and k[1].endswith("/" + variant) and k[2] == "fwd_bwd"})
        for case in cases:
            two, one = (rows.get((2, case, "fwd_bwd", p)) for p in PATH_PROVIDERS.values())
            if two is None or one is None:
                continue
            ratio = one["median_ms"] / two["median_ms"]
            if abs(ratio - 1) > TIE:
                wins["one_pass" if ratio < 1 else "two_pass"] += 1
            shape = case.split("/")[0]
            out.append(f"| {cls} | {shape} | {two['median_ms']:.3f} | {one['median_ms']:.3f} | {ratio:.2f} |")
        choice[cls] = None if wins["two_pass"] == wins["one_pass"] else max(wins, key=wins.get)
    return out, choice


def render(rows: list[dict]) -> str:
    by_key, notes = index(rows)
    first = next((r for r in rows if r.get("device")), {})
    lines = [f"# Targets (issue 11), {DTYPE}, device time", "",
             f"device: {first.get('device')}; torch {first.get('torch')}; triton {first.get('triton')}", "",
             *targets_table(by_key), "",
             "## `path=\"auto\"`: adapter fwd+bwd, two-pass (`fast`) vs one-pass (`fast_onepass`)", ""]
    table, choice = auto_path(by_key)
    lines += table + [""]
    lines += [f"- {cls}: " + (f"`{c}`" if c else f"no choice (no shape with both rows, or as many wins each, "
                                                 f"differences under {TIE:.0%} counting for neither)")
              for cls, c in choice.items()]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = json_arguments(__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="default: targets.md beside the first JSON file")
    args = ap.parse_args(argv)
    text = render(load_all(args.json))
    (args.out or args.json[0].parent / "targets.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
