"""Shared fixtures: the authors' reference files, real pycaffe, and tiny real LMDBs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from caffe_transfer.common import caffe_env

REPO = Path(__file__).resolve().parent.parent
REFERENCE = Path(os.environ.get("CAFFE_TRANSFER_REFERENCE", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference() -> Path:
    """`../shared/reference/convnet_transfer`, the authors' released files (never copied here)."""
    root = REFERENCE / "convnet_transfer"
    if not root.is_dir():
        pytest.skip(f"the authors' reference files are not at {root} (set CAFFE_TRANSFER_REFERENCE)")
    return root


@pytest.fixture(scope="session")
def caffe():
    return caffe_env.pycaffe()


@pytest.fixture(scope="session")
def pb2():
    return caffe_env.caffe_pb2()


def write_datum_lmdb(path: Path, images: np.ndarray, labels: list[int], pb2) -> None:
    """A real LMDB of raw Datums (uint8 C,H,W) as convert_imageset writes them."""
    import lmdb

    env = lmdb.open(str(path), map_size=1 << 28)
    with env.begin(write=True) as txn:
        for i, (image, label) in enumerate(zip(images, labels)):
            c, h, w = image.shape
            datum = pb2.Datum(channels=c, height=h, width=w, data=image.tobytes(), label=int(label))
            txn.put(f"{i:08d}_img{i}.png".encode(), datum.SerializeToString())
    env.close()


def write_mean(path: Path, mean: np.ndarray, pb2) -> None:
    c, h, w = mean.shape
    blob = pb2.BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.astype(np.float32).ravel().tolist())
    path.write_bytes(blob.SerializeToString())


def make_data_root(root: Path, datasets: set[str], size: int, count: int, classes: int, pb2) -> Path:
    """One small random-image LMDB and mean, linked in as every dataset `gen` may name."""
    rng = np.random.default_rng(0)
    store = root / "_store"
    store.mkdir(parents=True)
    images = rng.integers(0, 256, size=(count, 3, size, size), dtype=np.uint8)
    write_datum_lmdb(store / "lmdb", images, [i % classes for i in range(count)], pb2)
    write_mean(store / "mean.binaryproto", images.mean(axis=0), pb2)
    for name in datasets:
        (root / name).mkdir()
        (root / name / "lmdb").symlink_to(store / "lmdb")
        (root / name / "mean.binaryproto").symlink_to(store / "mean.binaryproto")
    return root


def natman_plan(tmp_path: Path, pb2, *options: str) -> Path:
    """`caffe-transfer plan` of the natural/man-made experiment (2 bases, 14 transfers) for the
    small net on tiny random-image data, CPU; `options` are added to the command line."""
    from click.testing import CliRunner

    from caffe_transfer.cli import cli

    data = make_data_root(tmp_path / "data", {f"halfnatman{h}_{s}" for h in "AB" for s in ("train", "valid")},
                          32, 40, 3, pb2)
    out = tmp_path / "plan"
    result = CliRunner().invoke(cli, ["plan", "--experiments", "natman", "--out", str(out), "--arch", "small",
                                      "--data-root", str(data), "--fc8-outputs", "3", "--cpu", *options])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def one_gpu(tmp_path, monkeypatch):
    """A PATH whose nvidia-smi reports one GPU, of the compute capability written into the file it
    returns: the driver's answers, on a machine that has no GPU (Caffe stays real)."""
    bin_dir, capability = tmp_path / "smi", tmp_path / "smi" / "capability"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"""#!/bin/sh
case "$*" in
  -L) echo "GPU 0: NVIDIA Test (UUID: GPU-0)" ;;
  *compute_cap*) cat {capability} ;;
  *) exit 9 ;;
esac
""")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return capability
