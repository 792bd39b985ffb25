"""The DataLayer patch (tools/caffe_fixes/parallel_data_layer.patch) gives stock Caffe's batches.

Stock Caffe's first batches of a generated LMDB (crop 227, mirror, mean file, random_seed 1701;
raw, float and encoded Datums; TRAIN, and TEST for the untouched phase) were recorded once from
the unpatched build, with this module as a script (from the repository's root):

    CAFFE_ROOT=/opt/caffe-stock .venv/bin/python -m tests.test_datalayer_patch --record

where /opt/caffe-stock was built by `tools/install_caffe.sh` at commit 8c80f7e (before the patch).
The patched build must give the same hashes at every CAFFE_DATA_THREADS, 0 (the original loop)
included; each count runs in its own process, as Caffe reads the variable when a net is made.
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
from tests.conftest import REPO, make_data_root

SEED = 1701
SHAPE = (3, 240, 250)  # not square, and larger than the crop, so that offsets and axes matter
IMAGES, BATCH, BATCHES = 12, 5, 4  # the fourth batch wraps round the LMDB

# Recorded from stock Caffe by the command in the module docstring. Raw and encoded agree: the PNGs
# hold the raw Datums' pixels, and stock Caffe transforms both to the same values.
GOLDEN = {
    "raw": "f09fb0f5257efb426776ce3450b07c17995699a09302b04dfe4613512690f9c4",
    "float": "62a4d31b9922784bbb288d9a114a55ef288f8a9510e1b7e8333e7ea45cde429e",
    "encoded": "f09fb0f5257efb426776ce3450b07c17995699a09302b04dfe4613512690f9c4",
    "raw-test": "c38d68eb2561d451645133e79924ba6e5cfa71ea12616861400b7d996c2d735f",
}


def make_inputs(work: Path) -> dict[str, Path]:
    """The three LMDBs (the same images as raw, float and PNG-encoded Datums) and the mean file."""
    import cv2
    import lmdb

    from caffe_transfer.common.caffe_env import caffe_pb2

    pb2 = caffe_pb2()
    rng = np.random.default_rng(20141208)
    images = rng.integers(0, 256, size=(IMAGES, *SHAPE), dtype=np.uint8)
    mean = (rng.random(SHAPE, dtype=np.float32) * 255).astype(np.float32)
    c, h, w = SHAPE
    blob = pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.ravel().tolist())
    (work / "mean.binaryproto").write_bytes(blob.SerializeToString())
    kinds = {}
    for kind in ("raw", "float", "encoded"):
        env = lmdb.open(str(work / kind), map_size=1 << 28)
        with env.begin(write=True) as txn:
            for i, image in enumerate(images):
                datum = pb2.Datum(channels=c, height=h, width=w, label=i % 5)
                if kind == "raw":
                    datum.data = image.tobytes()
                elif kind == "float":
                    datum.float_data.extend((image.astype(np.float32) * 0.5 + 0.25).ravel().tolist())
                else:  # lossless, so the decoded pixels do not depend on the encoder's version
                    datum = pb2.Datum(label=i % 5, encoded=True,
                                      data=cv2.imencode(".png", image.transpose(1, 2, 0))[1].tobytes())
                txn.put(f"{i:08d}".encode(), datum.SerializeToString())
        env.close()
        kinds[kind] = work / kind
    return kinds


def batch_hashes(work: Path) -> dict[str, str]:
    """sha256 of the first BATCHES batches (data, then labels) of each LMDB, as this process's
    Caffe makes them."""
    from caffe_transfer.common.caffe_env import pycaffe

    caffe = pycaffe()
    caffe.set_mode_cpu()
    hashes = {}
    for name, kind, phase in (("raw", "raw", "TRAIN"), ("float", "float", "TRAIN"),
                              ("encoded", "encoded", "TRAIN"), ("raw-test", "raw", "TEST")):
        net_file = work / f"{name}.prototxt"
        net_file.write_text(f'''layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ crop_size: 227 mirror: true mean_file: "{work / 'mean.binaryproto'}" }}
  data_param {{ source: "{work / kind}" batch_size: {BATCH} backend: LMDB }} }}''')
        caffe.set_random_seed(SEED)
        net = caffe.Net(str(net_file), getattr(caffe, phase))
        digest = hashlib.sha256()
        for _ in range(BATCHES):
            net.forward()
            digest.update(net.blobs["data"].data.astype(np.float32).tobytes())
            digest.update(net.blobs["label"].data.astype(np.float32).tobytes())
        hashes[name] = digest.hexdigest()
        del net
    return hashes


def hashes_at(threads: str | None, work: Path) -> dict[str, str]:
    """batch_hashes in a fresh process with CAFFE_DATA_THREADS=threads (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "CAFFE_DATA_THREADS"}
    if threads is not None:
        env["CAFFE_DATA_THREADS"] = threads
    out = subprocess.run([sys.executable, "-m", __name__, "--hashes", str(work)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("datalayer")
    make_inputs(work)
    return work


@pytest.mark.parametrize("threads", ["0", "1", "2", "4", None])
def test_batches_equal_stock_caffes_at_any_thread_count(inputs, threads):
    assert hashes_at(threads, inputs) == GOLDEN


LOSS_LINE = re.compile(r"Iteration \d+.*loss = |(Train|Test) net output")


def _loss_lines(run: Path, threads: str, pb2) -> list[str]:
    """The loss and net-output lines of a `caffe train` of `run`, made anew, at CAFFE_DATA_THREADS."""
    for snapshot in (run / "snapshots").glob("*"):
        snapshot.unlink()
    env = {**os.environ, "CAFFE_DATA_THREADS": threads, "OPENBLAS_NUM_THREADS": "1", "GLOG_logtostderr": "1",
           "GLOG_minloglevel": "0"}  # pycaffe, once imported by any test, sets 2 for this process
    out = subprocess.run([str(caffe_env.tool("caffe")), "train", "--solver=solver.prototxt"], cwd=run, env=env,
                         capture_output=True, text=True, check=True).stderr
    lines = [re.sub(r" \(.*? iters\)", "", line.split("] ", 1)[1])  # without the timing
             for line in out.splitlines() if LOSS_LINE.search(line)]
    assert f"Data transform threads: {threads}" in out
    return lines


@pytest.mark.slow
def test_a_short_training_prints_the_same_loss_lines_at_0_and_4_threads(tmp_path, pb2):
    data = make_data_root(tmp_path / "data", {"half0A_train", "half0A_valid"}, 16, 64, 3, pb2)
    options = GenOptions(arch="small", data_root=data, fc8_outputs=3, gpu=False,
                         solver={"max_iter": 30, "display": 5, "test_interval": 15, "test_iter": 1,
                                 "snapshot": 1000, "random_seed": SEED})
    t = parse("half0A")
    write_runs({tmp_path / t.name: t}, options)
    stock, threaded = (_loss_lines(tmp_path / t.name, threads, pb2) for threads in ("0", "4"))
    assert len(stock) >= 10 and stock == threaded


@pytest.mark.slow
def test_caffes_own_data_layer_and_transformer_tests_pass_at_0_1_and_4_threads(tmp_path):
    out = subprocess.run(["bash", str(REPO / "tools" / "caffe_own_tests.sh"), str(tmp_path)], capture_output=True,
                         text=True, env={**os.environ, "CAFFE_ROOT": str(caffe_env.caffe_root())})
    assert out.returncode == 0, out.stdout + out.stderr
    runs = re.findall(r"== CAFFE_DATA_THREADS=(\d)\n\[=+\] Running (\d+) tests.*?\n\[  PASSED  \] (\d+) tests",
                      out.stdout, re.S)
    assert [r[0] for r in runs] == ["0", "1", "4"], out.stdout
    assert all(int(run[1]) == int(run[2]) > 20 for run in runs), out.stdout
    assert "FAILED" not in out.stdout


def test_a_bad_thread_count_stops_caffe_on_one_line(inputs):
    for bad in ("-1", "two", "", "65", "1.5"):
        env = {**os.environ, "CAFFE_DATA_THREADS": bad}
        out = subprocess.run([sys.executable, "-m", __name__, "--hashes", str(inputs)], cwd=REPO, env=env,
                             capture_output=True, text=True)
        assert out.returncode != 0
        assert f"CAFFE_DATA_THREADS={bad}: expected a whole number from 0 (stock loop) to 64" in out.stderr


if __name__ == "__main__":
    if sys.argv[1] == "--record":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            make_inputs(Path(tmp))
            print(json.dumps(batch_hashes(Path(tmp)), indent=4))
    elif sys.argv[1] == "--hashes":
        print(json.dumps(batch_hashes(Path(sys.argv[2]))))
