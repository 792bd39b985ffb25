"""transplant without pycaffe: the `caffe` tool's route writes the init pycaffe writes, bit for bit.

Where pycaffe does not import, `transplant` fills the run's deploy net with `caffe train` (the
solver's random_seed, TEST phase, no step) and copies the base's layers through caffe_pb2
(`runs/fill.py`). Each test makes one init both ways on real Caffe (CPU) and compares the two
files byte for byte and every blob bit for bit, for every kind of net that has an init to make:
frozen, fine-tuned, selffer and random filters, on the small net and on CaffeNet.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffe_transfer.common import caffe_env
from caffe_transfer.model.treatments import parse
from caffe_transfer.runs.gen import GenOptions, write_runs
from caffe_transfer.runs.transplant import Transplant, read_caffemodel, transplant

from .conftest import make_data_root

KINDS = {"frozen": "transfer0A0B_1_3", "fine-tuned": "transfer-ft0A0B_1_3", "selffer": "transfer0A0A_1_5",
         "random filters": "nolearn_1_4"}
DATASETS = {f"{half}_{subset}" for half in ("half0A", "half0B", "whole") for subset in ("train", "valid")}
CLI = str(Path(sys.executable).parent / "caffe-transfer")


def _runs(root: Path, arch: str, names: list[str], caffe, pb2) -> Path:
    """Run folders of `names` and a base `base.caffemodel`: half0A's deploy net as Caffe fills it
    under seed 1, saved by pycaffe (any real half0A net serves: transplant copies, never trains)."""
    size = 32 if arch == "small" else 256
    data = make_data_root(root / "data", DATASETS, size=size, count=4, classes=3, pb2=pb2)
    options = GenOptions(arch=arch, data_root=data, gpu=False)
    write_runs({root / name: parse(name) for name in ["half0A", *names]}, options)
    caffe.set_random_seed(1)
    caffe.Net(str(root / "half0A" / "deploy.prototxt"), caffe.TEST).save(str(root / "base.caffemodel"))
    return root


@pytest.fixture(scope="module")
def small(tmp_path_factory, caffe, pb2) -> Path:
    return _runs(tmp_path_factory.mktemp("small"), "small", list(KINDS.values()), caffe, pb2)


def _make(run_dir: Path, out: Path, route: str, monkeypatch, **kwargs) -> Transplant:
    monkeypatch.setenv(caffe_env.FILL, route)
    base = run_dir.parent / "base.caffemodel" if parse(run_dir.name).base else None
    return transplant(run_dir, base=base, out=out, **kwargs)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _assert_same_init(ours: Transplant, theirs: Transplant) -> dict[str, list[np.ndarray]]:
    """Every layer and blob bit for bit, the record's checksums, and the whole file; the blobs."""
    a, b = read_caffemodel(ours.init), read_caffemodel(theirs.init)
    assert list(a) == list(b)
    for name in a:
        assert len(a[name]) == len(b[name]) and all(_same(x, y) for x, y in zip(a[name], b[name])), name
    assert ours.layers == theirs.layers
    assert _sha256(ours.init) == _sha256(theirs.init)
    routes = [json.loads(t.record.read_text())["filled_by"] for t in (ours, theirs)]
    assert routes == ["pycaffe", "caffe"]
    return b


def _assert_copies_and_fillers(blobs: dict, layers: list[dict], base: Path | None) -> None:
    """What both routes agree on is a real transplant: the copied layers are the base's, the
    others hold Caffe's random filler values (no layer is all zeros or the base's)."""
    source = read_caffemodel(base) if base else {}
    for entry in layers:
        weights = blobs[entry["layer"]][0]
        if entry["action"] == "copied":
            assert all(_same(x, y) for x, y in zip(blobs[entry["layer"]], source[entry["from_layer"]]))
        else:
            sample = weights.ravel()[:4096]
            assert np.unique(sample).size > sample.size // 2, entry["layer"]
            assert not any(_same(weights, w[0]) for w in source.values())


@pytest.mark.parametrize("kind", KINDS)
def test_the_caffe_tool_writes_the_init_pycaffe_writes(small, kind, tmp_path, monkeypatch):
    run_dir = small / KINDS[kind]
    pycaffes = _make(run_dir, tmp_path / "pycaffe.caffemodel", "pycaffe", monkeypatch)
    tools = _make(run_dir, tmp_path / "caffe.caffemodel", "caffe", monkeypatch)
    blobs = _assert_same_init(pycaffes, tools)
    t = parse(KINDS[kind])
    copied = [e["layer"] for e in tools.layers if e["action"] == "copied"]
    assert copied == (["conv1", "conv2", "conv3", "conv4", "conv5"][:t.n] if t.base else [])
    _assert_copies_and_fillers(blobs, tools.layers, small / "base.caffemodel" if t.base else None)


@pytest.mark.parametrize("seed", [0, 2 ** 31, 2 ** 32 - 1])
def test_the_seed_reaches_caffe_by_both_routes(small, seed, tmp_path, monkeypatch):
    """Seeds over the whole range `--seed` takes (the solver's random_seed is an int64 that Caffe
    casts to unsigned): the same init both ways, and another seed gives other filler values."""
    run_dir = small / KINDS["fine-tuned"]
    made = [_make(run_dir, tmp_path / f"{route}.caffemodel", route, monkeypatch, seed=seed)
            for route in ("pycaffe", "caffe")]
    _assert_same_init(*made)
    other = _make(run_dir, tmp_path / "other.caffemodel", "caffe", monkeypatch, seed=seed ^ 1)
    for this, that in zip(made[1].layers, other.layers):
        assert (this["blobs"] == that["blobs"]) == (this["action"] == "copied"), this["layer"]


def _caffe_without_pycaffe(tmp_path: Path) -> Path:
    """A CAFFE_ROOT as a build for another Python leaves it: the tools and caffe_pb2, no pycaffe."""
    real, root = caffe_env.caffe_root(), tmp_path / "caffe"
    proto = root / caffe_env.PYCAFFE_SUBDIR / "caffe" / "proto"
    proto.mkdir(parents=True)
    (proto / "caffe_pb2.py").symlink_to(real / caffe_env.PYCAFFE_SUBDIR / "caffe" / "proto" / "caffe_pb2.py")
    (root / "bin").symlink_to(real / "bin")
    (root / ".caffe-transfer-build").write_text(caffe_env.build_stamp() or "")
    return root


def test_where_pycaffe_does_not_import_transplant_takes_the_caffe_tool(small, tmp_path, monkeypatch):
    """The CLI in a process that cannot import pycaffe: doctor names the tool's route, and
    `transplant` writes the run's init as pycaffe writes it here."""
    run_dir = small / KINDS["frozen"]
    pycaffes = _make(run_dir, tmp_path / "pycaffe.caffemodel", "pycaffe", monkeypatch)
    env = {k: v for k, v in os.environ.items() if k != caffe_env.FILL}
    env["CAFFE_ROOT"] = str(_caffe_without_pycaffe(tmp_path))
    doctor = subprocess.run([CLI, "doctor"], capture_output=True, text=True, env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert re.search(r"\bpycaffe +not importable", doctor.stdout), doctor.stdout
    assert re.search(r"\btransplant +the caffe tool and caffe_pb2 \(pycaffe does not import\)", doctor.stdout)
    made = subprocess.run([CLI, "transplant", str(run_dir), "--base", str(small / "base.caffemodel")],
                          capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    record = json.loads((run_dir / "transplant.json").read_text())
    tools = Transplant(run_dir / "init.caffemodel", run_dir / "transplant.json", record["layers"], record["seed"])
    _assert_same_init(pycaffes, tools)
    assert not list(run_dir.glob(".fill-*"))  # the tool's scratch folders are gone

    forced = subprocess.run([CLI, "transplant", str(run_dir), "--base", str(small / "base.caffemodel"), "--out",
                             str(tmp_path / "forced.caffemodel")], capture_output=True, text=True,
                            env={**env, caffe_env.FILL: "pycaffe"})
    assert forced.returncode == 1 and forced.stderr.count("\n") == 1, forced.stderr
    assert "CAFFE_TRANSFER_FILL=pycaffe, but " in forced.stderr and "no pycaffe" in forced.stderr


def test_a_route_that_does_not_exist_is_one_line_and_writes_nothing(small, tmp_path):
    env = {**os.environ, caffe_env.FILL: "cuda"}
    out = tmp_path / "init.caffemodel"
    made = subprocess.run([CLI, "transplant", str(small / KINDS["random filters"]), "--out", str(out)],
                          capture_output=True, text=True, env=env)
    assert made.returncode == 1 and made.stderr.count("\n") == 1, made.stderr
    assert "CAFFE_TRANSFER_FILL='cuda': expected pycaffe or caffe" in made.stderr
    assert not list(tmp_path.iterdir())
    doctor = subprocess.run([CLI, "doctor"], capture_output=True, text=True, env=env)
    assert doctor.returncode == 1 and "MISSING transplant" in doctor.stdout


@pytest.mark.slow  # fills CaffeNet (61M weights) four times, 233 MB a file
@pytest.mark.parametrize("name", ["transfer0A0B_1_7", "nolearn_1_4"])  # every copy up to fc7; fillers only
def test_caffenet_inits_are_the_same_by_both_routes(name, tmp_path, monkeypatch, caffe, pb2):
    runs = _runs(tmp_path / "runs", "caffenet", [name], caffe, pb2)
    made = [_make(runs / name, tmp_path / f"{route}.caffemodel", route, monkeypatch) for route in ("pycaffe", "caffe")]
    blobs = _assert_same_init(*made)
    _assert_copies_and_fillers(blobs, made[1].layers, runs / "base.caffemodel" if parse(name).base else None)
