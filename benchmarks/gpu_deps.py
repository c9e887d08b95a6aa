"""The Python packages the GPU image lacks (PyAV, NVIDIA DALI and DALI's own dependencies), taken to the
GPU machine in parts small enough for the device tool's 64 MiB per call.

DALI alone is a 199 MB wheel, so no single call can carry it. This script packs every missing package
once, on a machine with PyPI, into one xz archive of an install tree (Python 3.12, x86-64, the image's),
split into numbered parts; each GPU call carries one part, which is stashed outside the repository
(files there outlive a call while the machine is warm, ~30 s), and the call that carries the last part
joins, verifies and unpacks them:

    python -m benchmarks.gpu_deps pack                      # here (downloads ~300 MB of wheels once)
    # on the GPU machine, one call per part, back to back, each carrying .gpu-deps/part-K:
    python3 -m benchmarks.gpu_deps gather                   # stash the carried part(s), say what is missing
    python3 -m benchmarks.gpu_deps unpack                   # when all are stashed: join, check, extract
    export PYTHONPATH=/tmp/stadapter-gpu-site:$PYTHONPATH

``pack`` also downloads pytest-xdist into ``.gpu-deps/test-wheels`` (``test-wheels`` does only that);
``benchmarks/run_gpu.sh``'s phase T extracts them (``test-site``) where the image lacks pytest-xdist.

``benchmarks/run_gpu_train.sh`` runs ``gather`` and ``unpack`` for its phases. The unpack side uses
only the standard library (``tarfile`` reads xz), since nothing can be installed on the GPU machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# What the GPU image lacks for issue 12's measurements (device README's package list): PyAV, DALI for
# CUDA 13 and every dependency of DALI the image does not hold. Pinned, so each pack is the same set.
REQUIREMENTS = (
    "av==19.0.2",
    "nvidia-dali-cuda130==2.4.0",
    "nvidia-nvimgcodec-cu13==0.9.0.20",  # DALI asks nvidia-nvimgcodec-cu13[all] (<0.10, >=0.9)
    "nvidia-libnvcomp-cu13==5.3.0.16",
    "nvidia-nvjpeg==13.3.2.43",  # nvimgcodec's [all] extra
    "nvidia-nvjpeg2k-cu13==0.11.0.51",
    "nvidia-nvtiff-cu13==0.8.0.82",
    "astunparse==1.6.3",
    "gast==0.7.0",
    "optree==0.20.0",
    "nvtx==0.2.17",
    "makefun==1.16.0",
    "libcst==1.9.0",
)
# pytest-xdist for the GPU tests (run_gpu.sh's phase T runs them over the machine's cores), for an image
# without it (the device's KINDS.md lists it as there): pure Python, ~90 KB, kept beside the parts as
# wheels, since phase T runs before the pack's parts are all in.
TEST_REQUIREMENTS = ("pytest-xdist==3.8.0", "execnet==2.1.2")
TEST_WHEELS = "test-wheels"
DEFAULT_TEST_SITE = Path("/tmp/stadapter-test-site")
PYTHON_VERSION = "3.12"  # the GPU image's python3
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
ARCHIVE = "gpu-deps.tar.xz"
COMPLETE = ".gpu-deps-complete"  # written into the site last, by unpack
DEFAULT_DEST = Path(".gpu-deps")
DEFAULT_STASH = Path("/tmp/stadapter-gpu-deps")
DEFAULT_SITE = Path("/tmp/stadapter-gpu-site")
# one call carries the working tree too (~1-2 MiB tracked); 60 MiB parts leave room for it
DEFAULT_PART_MIB = 60


def _target_flags() -> list:
    flags = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for p in PLATFORMS:
        flags += ["--platform", p]
    return flags


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prune(site: Path) -> list:
    """Drop what the image's Python cannot use and what would shadow its packages; returns the paths
    removed (relative). Extension modules built for another CPython (DALI ships 3.10 to 3.15t, ~9 MB
    each) go; so does ``nvidia/__init__.py``, which would turn the image's ``nvidia`` namespace package
    (cuBLAS, cuDNN, ... that torch loads) into a regular package living here."""
    tag = "cpython-" + PYTHON_VERSION.replace(".", "") + "-"
    other = re.compile(r"\.cpython-\d+t?-")
    gone = [p for p in site.rglob("*.so") if other.search(p.name) and tag not in p.name]
    init = site / "nvidia" / "__init__.py"
    gone += [init] if init.is_file() else []
    for p in gone:
        p.unlink()
    return sorted(str(p.relative_to(site)) for p in gone)


def split(archive: Path, dest: Path, part_mib: float, contents: list) -> list:
    """``dest/part-K/`` (K = 1..N), each with one slice of ``archive`` and a ``MANIFEST.json`` naming the
    whole archive's sha256, N, the slice's index and sha256, and ``contents``. Returns the part dirs."""
    if part_mib <= 0:
        raise ValueError(f"part_mib: expected a positive size in MiB, got {part_mib}")
    archive, dest = Path(archive), Path(dest)
    size, step = archive.stat().st_size, int(part_mib * 2 ** 20)
    n = max(1, -(-size // step))
    whole = _sha256(archive)
    for old in dest.glob("part-*"):  # a previous pack's parts (never the wheels kept beside them)
        shutil.rmtree(old)
    dirs = []
    with open(archive, "rb") as f:
        for k in range(1, n + 1):
            d = dest / f"part-{k}"
            d.mkdir(parents=True)
            piece = d / f"{ARCHIVE}.{k:03d}"
            piece.write_bytes(f.read(step))
            (d / "MANIFEST.json").write_text(json.dumps(
                {"archive": ARCHIVE, "sha256": whole, "bytes": size, "parts": n, "index": k,
                 "part": piece.name, "part_sha256": _sha256(piece), "contents": contents}, indent=1))
            dirs.append(d)
    return dirs


def pack(dest: Path = DEFAULT_DEST, wheel_dir: Path | None = None, part_mib: float = DEFAULT_PART_MIB,
         requirements=REQUIREMENTS, download: bool = True) -> list:
    """Download ``requirements`` (for the image's Python and platform) into ``wheel_dir``, install them
    into a staging tree, prune it, compress it (xz) and :func:`split` it into ``dest``."""
    dest = Path(dest)
    wheel_dir = Path(wheel_dir or dest / "wheels")
    wheel_dir.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    if download:
        subprocess.run(pip + ["download", "-q", "--no-deps", "-d", str(wheel_dir), *_target_flags(), *requirements],
                       check=True)
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise ValueError(f"wheel_dir: expected .whl files in {wheel_dir}, found none")
    with tempfile.TemporaryDirectory() as tmp:
        site, archive = Path(tmp) / "site", Path(tmp) / ARCHIVE
        # --ignore-requires-python: pip checks a wheel file's Requires-Python against the Python running
        # it, not --python-version (av 19 wants >= 3.12)
        subprocess.run(pip + ["install", "-q", "--no-index", "--no-deps", "--no-compile", "--ignore-requires-python",
                              "--target", str(site), "--find-links", str(wheel_dir), *_target_flags(),
                              *map(str, wheels)], check=True)
        removed = prune(site)
        print(f"pruned {len(removed)} path(s): {', '.join(removed[:4])}{' ...' if len(removed) > 4 else ''}")
        # xz, not zstd: the GPU machine's Python reads xz with no extra module. -T0: every core here.
        with open(archive, "wb") as out:
            tar = subprocess.Popen(["tar", "-C", str(site), "-cf", "-", "."], stdout=subprocess.PIPE)
            subprocess.run(["xz", "-9", "-T0", "-c"], stdin=tar.stdout, stdout=out, check=True)
            if tar.wait():
                raise RuntimeError(f"tar of {site} failed (exit {tar.returncode})")
        dirs = split(archive, dest, part_mib, [w.name for w in wheels])
    total = sum(p.stat().st_size for d in dirs for p in d.iterdir())
    print(f"{len(dirs)} part(s) in {dest}, {total / 2 ** 20:.1f} MiB in all; carry one per GPU call: "
          + ", ".join(str(d) for d in dirs))
    return dirs


def _manifests(root: Path) -> list:
    return [json.loads(m.read_text()) | {"dir": m.parent} for m in sorted(root.glob("part-*/MANIFEST.json"))]


def gather(src: Path = DEFAULT_DEST, stash: Path = DEFAULT_STASH) -> tuple[int, list]:
    """Copy the parts present under ``src`` (the carried ones) into ``stash``, each checked against its
    manifest. Returns (number of parts, indices still missing from the stash)."""
    src, stash = Path(src), Path(stash)
    found = _manifests(src)
    if not found:
        raise ValueError(f"{src}: no part-K/MANIFEST.json here: carry one part per call (carry: [\".gpu-deps/part-K\"])")
    stash.mkdir(parents=True, exist_ok=True)
    packs = {m["sha256"] for m in found} | {json.loads(p.read_text())["sha256"] for p in stash.glob("MANIFEST.*.json")}
    if len(packs) != 1:
        raise ValueError(f"{src}: its part(s) and {stash}'s come from {len(packs)} different packs; remove {stash} "
                         f"and carry one pack's parts")
    for m in found:
        piece = m["dir"] / m["part"]
        if not piece.is_file() or _sha256(piece) != m["part_sha256"]:
            raise ValueError(f"{piece}: damaged or missing part {m['index']} of {m['parts']} (sha256 does not "
                             f"match its manifest); pack again")
        for f in (piece, m["dir"] / "MANIFEST.json"):
            shutil.copy2(f, stash / (f.name if f == piece else f"MANIFEST.{m['index']:03d}.json"))
    return _status(stash)[:2]


def _status(stash: Path) -> tuple[int, list, dict]:
    """(number of parts, indices missing from ``stash``, {index: manifest} of those stashed)."""
    mans = {m["index"]: m for m in (json.loads(p.read_text()) for p in sorted(stash.glob("MANIFEST.*.json")))}
    if not mans:
        return 0, [], {}
    whole = {m["sha256"] for m in mans.values()}
    if len(whole) != 1:
        raise ValueError(f"{stash}: parts of {len(whole)} different packs; remove it and carry one pack's parts")
    n = next(iter(mans.values()))["parts"]
    have = {k for k, m in mans.items() if (stash / m["part"]).is_file()}
    return n, sorted(set(range(1, n + 1)) - have), mans


def unpack(stash: Path = DEFAULT_STASH, site: Path = DEFAULT_SITE) -> Path:
    """Join the stashed parts, check the whole archive's sha256 and extract it into ``site``."""
    stash, site = Path(stash), Path(site)
    n, missing, mans = _status(stash)
    if not n or missing:
        what = f"parts {missing} of {n}" if n else "every part"
        raise ValueError(f"{stash}: {what} not stashed yet (a machine that went cold loses them: carry each "
                         f".gpu-deps/part-K again, in back-to-back calls)")
    joined = stash / ARCHIVE
    with open(joined, "wb") as out:
        for k in range(1, n + 1):
            with open(stash / mans[k]["part"], "rb") as f:
                shutil.copyfileobj(f, out)
    if _sha256(joined) != mans[1]["sha256"]:
        raise ValueError(f"{joined}: the joined parts' sha256 does not match the manifest; pack again")
    site.mkdir(parents=True, exist_ok=True)
    with tarfile.open(joined, "r:xz") as tar:
        tar.extractall(site, filter="data")
    joined.unlink()
    (site / COMPLETE).write_text(mans[1]["sha256"] + "\n")  # an interrupted extract leaves none
    return site


def fetch_test_wheels(dest: Path = DEFAULT_DEST, requirements=TEST_REQUIREMENTS) -> Path:
    """Download ``requirements`` (pure-Python wheels) into ``dest/test-wheels``; returns that folder."""
    out = Path(dest) / TEST_WHEELS
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(out), *requirements],
                   check=True)
    return out


def extract_test_wheels(src: Path = DEFAULT_DEST / TEST_WHEELS, site: Path = DEFAULT_TEST_SITE) -> Path:
    """Extract the pure-Python wheels in ``src`` into ``site`` (a folder for ``PYTHONPATH``: a wheel
    unzipped is an install, entry points included, for the standard library alone to do)."""
    src, site = Path(src), Path(site)
    wheels = sorted(src.glob("*.whl"))
    if not wheels:
        raise ValueError(f"{src}: expected .whl files (carry .gpu-deps/{TEST_WHEELS}), found none")
    for w in wheels:
        if not w.name.endswith("-py3-none-any.whl"):
            raise ValueError(f"{w}: expected a pure-Python wheel (*-py3-none-any.whl)")
        with zipfile.ZipFile(w) as z:
            z.extractall(site)
    return site


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_deps", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="download, install, prune, compress and split (here, with PyPI)")
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    p.add_argument("--wheel-dir", type=Path, default=None, help="default: DEST/wheels")
    p.add_argument("--part-mib", type=float, default=DEFAULT_PART_MIB)
    p.add_argument("--no-download", action="store_true", help="use the wheels already in --wheel-dir")
    g = sub.add_parser("gather", help="stash the carried part(s) (on the GPU machine)")
    g.add_argument("--src", type=Path, default=DEFAULT_DEST)
    g.add_argument("--stash", type=Path, default=DEFAULT_STASH)
    u = sub.add_parser("unpack", help="join the stashed parts and extract them (on the GPU machine)")
    u.add_argument("--stash", type=Path, default=DEFAULT_STASH)
    u.add_argument("--site", type=Path, default=DEFAULT_SITE)
    t = sub.add_parser("test-wheels", help=f"download {', '.join(TEST_REQUIREMENTS)} into DEST/{TEST_WHEELS} (here)")
    t.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    ts = sub.add_parser("test-site", help="extract the carried test wheels for PYTHONPATH (on the GPU machine)")
    ts.add_argument("--src", type=Path, default=DEFAULT_DEST / TEST_WHEELS)
    ts.add_argument("--site", type=Path, default=DEFAULT_TEST_SITE)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        pack(a.dest, a.wheel_dir, a.part_mib, download=not a.no_download)
        if not a.no_download:
            print(fetch_test_wheels(a.dest))
    elif a.cmd == "test-wheels":
        print(fetch_test_wheels(a.dest))
    elif a.cmd == "test-site":
        print(extract_test_wheels(a.src, a.site))
    elif a.cmd == "gather":
        n, missing = gather(a.src, a.stash)
        print(f"{a.stash}: {n - len(missing)} of {n} part(s) stashed" + (f"; missing {missing}" if missing else
                                                                          "; ready to unpack"))
    else:
        print(unpack(a.stash, a.site))
    return 0


if __name__ == "__main__":
    sys.exit(main())
