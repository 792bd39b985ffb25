"""ImageNet as it comes, end to end on a generated tree: 1000 wnid folders of tiny JPEGs, a flat
val folder labelled by a generated devkit (its own ID order, internal synsets too), `lists
--devkit`, `splits`, the one-pass `prepare` of the random split 0, CaffeNet from `gen` (a batch of
2), real `caffe train` for two iterations, `transplant`, a transfer's two iterations, `report`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffe_transfer.cli import cli
from caffe_transfer.data.splits import read_list
from caffe_transfer.model.treatments import parse
from tests.test_imagenet_lists import _caffe_labels, imagenet_tree, write_devkit

SOLVER = ["max_iter=2", "test_iter=1", "test_interval=2", "snapshot=2", "display=1"]


def _ok(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, f"{args}: {result.output}"
    return result.output


def _tiny_batch(run: Path) -> None:
    """gen has no batch option: a batch of 2 (train and test) keeps CaffeNet's CPU steps short."""
    net = run / "train_val.prototxt"
    net.write_text(re.sub(r"batch_size: \d+", "batch_size: 2", net.read_text()))


@pytest.mark.slow
def test_imagenet_from_devkit_to_report(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    wnids, truth = imagenet_tree(tmp_path, 1000, 2, 1000, size=8)
    write_devkit(tmp_path / "devkit", wnids, truth, seed=5)

    _ok("lists", "--train-dir", tmp_path / "train", "--val-dir", tmp_path / "val", "--devkit", tmp_path / "devkit",
        "--out", tmp_path / "lists")
    assert (tmp_path / "lists" / "whole_valid.txt").read_text() == _caffe_labels(wnids, truth)
    for subset, whole in (("train", "whole_train.txt"), ("valid", "whole_valid.txt")):
        out = _ok("splits", "--whole-list", tmp_path / "lists" / whole, "--subset", subset, "--out", tmp_path / "split")
        assert "1000 classes (inferred" in out and "left out" not in out
    assert "lists are consistent" in _ok("splits", "--check", tmp_path / "split")

    data = tmp_path / "data"
    out = _ok("prepare", "--train-dir", tmp_path / "train", "--val-dir", tmp_path / "val", "--devkit",
              tmp_path / "devkit", "--experiments", "random", "--splits", "0", "--out", data, "--encoded")
    assert "(building encoded)" in out and "4 datasets under" in out
    for name in ("half0A_train", "half0B_train", "half0A_valid", "half0B_valid"):
        assert (data / name / "COMPLETE").is_file()
        assert read_list(data / name / "files.txt") == read_list(tmp_path / "split" / name / "files.txt")
    runs = tmp_path / "runs"
    base, transfer = parse("baseA", split="0"), parse("AnB", n=3, split="0")
    for t in (base, transfer):
        _ok("gen", "-t", t.name, "--out", runs / t.name, "--data-root", data, "--cpu",
            *[a for s in SOLVER for a in ("--solver", s)])
        _tiny_batch(runs / t.name)
    assert "final weights" in _ok("train", runs / base.name, "--quiet")
    out = _ok("transplant", runs / transfer.name)
    assert out.count("copied from half0A") == 3
    assert "final weights" in _ok("train", runs / transfer.name, "--quiet")
    _ok("report", runs, "--out", tmp_path / "report")
    assert (tmp_path / "report" / "report.txt").is_file()
