"""benchmarks/gpu_deps.py on local stand-in wheels: the install tree is pruned for the GPU image's
Python, split into parts, stashed part by part, and unpacked only when every part is there and intact."""
import json
import os
import shutil
import zipfile

import pytest

from benchmarks import gpu_deps


def _wheel(path, files):
    name = "fakepkg-1.0"
    files = dict(files)
    files[f"{name}.dist-info/METADATA"] = b"Metadata-Version: 2.1\nName: fakepkg\nVersion: 1.0\n"
    files[f"{name}.dist-info/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{name}.dist-info/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{name}.dist-info/RECORD"]).encode()
    with zipfile.ZipFile(path, "w") as z:
        for f, data in files.items():
            z.writestr(f, data)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("deps")
    wheels = root / "wheels"
    wheels.mkdir()
    blob = {v: os.urandom(40_000) for v in ("311", "312", "314t")}  # incompressible: several parts
    files = {f"fakepkg/_ext.cpython-{v}-x86_64-linux-gnu.so": b for v, b in blob.items()}
    files.update({"fakepkg/__init__.py": b"X = 1\n", "fakepkg/_abi3.abi3.so": b"abi3",
                  "nvidia/__init__.py": b"", "nvidia/fake/__init__.py": b"Y = 2\n"})
    _wheel(wheels / "fakepkg-1.0-py3-none-any.whl", files)
    stale = root / "out" / "part-9"  # a previous pack's part
    stale.mkdir(parents=True)
    dirs = gpu_deps.pack(root / "out", wheels, part_mib=15_000 / 2 ** 20, download=False)
    assert not stale.exists()
    return root, dirs, blob


def test_pack_keeps_the_wheels_in_its_destination(tmp_path):
    """The default wheel dir is DEST/wheels: packing again (--no-download) must find them."""
    (tmp_path / "wheels").mkdir()
    _wheel(tmp_path / "wheels" / "fakepkg-1.0-py3-none-any.whl", {"fakepkg/__init__.py": b""})
    for _ in range(2):
        (part,) = gpu_deps.pack(tmp_path, download=False)
        assert part == tmp_path / "part-1" and (tmp_path / "wheels" / "fakepkg-1.0-py3-none-any.whl").is_file()


def test_pack_splits_into_parts_with_manifests(packed):
    _, dirs, _ = packed
    mans = [json.loads((d / "MANIFEST.json").read_text()) for d in dirs]
    assert len(dirs) >= 3 and [m["index"] for m in mans] == list(range(1, len(dirs) + 1))
    assert {m["parts"] for m in mans} == {len(dirs)} and len({m["sha256"] for m in mans}) == 1
    assert all(m["contents"] == ["fakepkg-1.0-py3-none-any.whl"] for m in mans)
    assert all((d / m["part"]).stat().st_size <= 15_000 for d, m in zip(dirs, mans))


def test_parts_stashed_call_by_call_then_unpacked(packed, tmp_path):
    root, dirs, blob = packed
    stash, site = tmp_path / "stash", tmp_path / "site"
    carried = tmp_path / "tree" / ".gpu-deps"
    n = len(dirs)
    for k, d in enumerate(dirs, 1):  # one call per part: only that part is in the working tree
        shutil.rmtree(carried, ignore_errors=True)
        shutil.copytree(d, carried / d.name)
        assert gpu_deps.gather(carried, stash) == (n, list(range(k + 1, n + 1)))
        if k < n:
            with pytest.raises(ValueError, match=rf"parts \[{k + 1}.* of {n} not stashed"):
                gpu_deps.unpack(stash, site)
    assert gpu_deps.unpack(stash, site) == site
    assert (site / "fakepkg/_ext.cpython-312-x86_64-linux-gnu.so").read_bytes() == blob["312"]
    assert (site / "fakepkg/_abi3.abi3.so").read_bytes() == b"abi3"
    assert not (site / "fakepkg/_ext.cpython-311-x86_64-linux-gnu.so").exists()
    assert not (site / "fakepkg/_ext.cpython-314t-x86_64-linux-gnu.so").exists()
    # the image's `nvidia` namespace package (cuBLAS, cuDNN for torch) must not be shadowed
    assert not (site / "nvidia/__init__.py").exists() and (site / "nvidia/fake/__init__.py").is_file()
    assert not (stash / gpu_deps.ARCHIVE).exists()  # the joined archive is not kept
    assert (site / gpu_deps.COMPLETE).read_text().strip() == json.loads((dirs[0] / "MANIFEST.json").read_text())["sha256"]
    with pytest.raises(ValueError, match="no part-K/MANIFEST.json here"):
        gpu_deps.gather(tmp_path / "nothing-carried", stash)


def test_damaged_part_is_named_and_nothing_unpacks(packed, tmp_path):
    _, dirs, _ = packed
    carried = tmp_path / ".gpu-deps"
    shutil.copytree(dirs[1], carried / dirs[1].name)
    piece = next(carried.glob("part-*/gpu-deps.tar.xz.*"))
    piece.write_bytes(b"x" + piece.read_bytes()[1:])
    with pytest.raises(ValueError, match=rf"{piece}: damaged or missing part 2 of {len(dirs)}"):
        gpu_deps.gather(carried, tmp_path / "stash")
    with pytest.raises(ValueError, match="every part not stashed"):
        gpu_deps.unpack(tmp_path / "stash", tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_parts_of_two_packs_are_refused(packed, tmp_path):
    _, dirs, _ = packed
    stash = tmp_path / "stash"
    gpu_deps.gather(dirs[0].parent, stash)
    other = json.loads((stash / "MANIFEST.001.json").read_text()) | {"sha256": "0" * 64}
    (stash / "MANIFEST.001.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="parts of 2 different packs"):
        gpu_deps.unpack(stash, tmp_path / "site")
    # a part of another pack is refused before anything is copied into the stash
    before = sorted(p.name for p in stash.iterdir())
    with pytest.raises(ValueError, match="come from 2 different packs"):
        gpu_deps.gather(dirs[0].parent, stash)
    assert sorted(p.name for p in stash.iterdir()) == before


def test_bad_part_size_is_named(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    with pytest.raises(ValueError, match="part_mib: expected a positive size in MiB, got 0"):
        gpu_deps.split(tmp_path / "a", tmp_path / "out", 0, [])


def test_test_site_extracts_pure_wheels_importable_with_entry_points(tmp_path, monkeypatch):
    """The carried pytest-xdist wheels, unzipped, import from PYTHONPATH with their pytest11 entry
    point (how pytest finds the plugin); a platform wheel or an empty folder is refused by path."""
    import importlib.metadata
    import sys

    src = tmp_path / "test-wheels"
    src.mkdir()
    with pytest.raises(ValueError, match=r"test-wheels: expected .whl files \(carry .gpu-deps/test-wheels\)"):
        gpu_deps.extract_test_wheels(src, tmp_path / "site")
    _wheel(src / "fakepkg-1.0-py3-none-any.whl", {"fakepkg/__init__.py": b"VALUE = 7\n",
                                                   "fakepkg-1.0.dist-info/entry_points.txt":
                                                   b"[pytest11]\nfakepkg = fakepkg\n"})
    site = gpu_deps.extract_test_wheels(src, tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "fakepkg", raising=False)
    assert __import__("fakepkg").VALUE == 7
    eps = importlib.metadata.distribution("fakepkg").entry_points
    assert [(e.group, e.value) for e in eps] == [("pytest11", "fakepkg")]
    _wheel(src / "fakepkg-1.0-cp312-cp312-linux_x86_64.whl", {})
    with pytest.raises(ValueError, match=r"fakepkg-1.0-cp312-cp312-linux_x86_64.whl: expected a pure-Python wheel"):
        gpu_deps.extract_test_wheels(src, tmp_path / "site2")


def test_test_requirements_are_pinned_pure_python():
    assert all("==" in r for r in gpu_deps.TEST_REQUIREMENTS)
    assert {r.split("==")[0] for r in gpu_deps.TEST_REQUIREMENTS} == {"pytest-xdist", "execnet"}
