"""One decoding pass for many datasets: each LMDB is the one make-lmdb writes for its list alone,
the disk is planned before it starts, and a killed pass resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from caffe_transfer.cli import cli
from caffe_transfer.data.lmdb import BuildOptions, Dataset, build, build_many, read_mean
from tests.test_data import _contents, _jpegs, _one_line_error, small_disk  # noqa: F401 - a fixture
from tests.test_imagenet_lists import imagenet_tree, write_devkit

DATASETS = ["half0A_train", "half0B_train", "half0A_valid", "half0B_valid", "whole_train", "whole_valid",
            "reduced0001_train", "reduced0002_train"]


def _same_as_alone(built: Path, images: Path, options: BuildOptions, alone: Path) -> None:
    """The LMDB, mean and COMPLETE of `built` are make-lmdb's for its list alone."""
    single = build(built / "files.txt", images, alone, options, progress=False)
    assert not single.already_complete
    ours, theirs = _contents(built / "lmdb"), _contents(single.lmdb)
    assert ours.keys() == theirs.keys() and ours == theirs, built.name
    np.testing.assert_array_equal(read_mean(built / "mean.binaryproto"), read_mean(single.mean))
    assert json.loads((built / "COMPLETE").read_text()) == json.loads((alone / "COMPLETE").read_text())


@pytest.mark.parametrize("options", [BuildOptions(resize=16), BuildOptions(resize=16, encoded=True),
                                     BuildOptions(resize=0, gray=True)], ids=["raw", "encoded", "unresized-gray"])
def test_one_pass_writes_each_lmdb_as_make_lmdb_alone(options, tmp_path):
    images = tmp_path / "img"
    whole = _jpegs(images, 90, (24, 18))
    lists = []
    for name, keep in (("a", lambda i, c: c != 2), ("b", lambda i, c: c != 0), ("c", lambda i, c: i % 4 == 0),
                       ("d", lambda i, c: True)):
        (tmp_path / name).mkdir()
        lines = [line.split() for line in whole.read_text().splitlines()]
        relabelled = [f"{p} {int(c) if name != 'b' else int(c) - 1}\n" for i, (p, c) in enumerate(lines)
                      if keep(i, int(c))]
        (tmp_path / name / "files.txt").write_text("".join(relabelled))
        lists.append(Dataset(tmp_path / name / "files.txt", tmp_path / name))
    (images / "c1" / "1.jpg").write_bytes(b"not a JPEG")  # skipped, and reported, in every list that holds it
    results = build_many([(images, lists)], options, progress=False)
    holds = ["c1/1.jpg 1\n" in d.list_file.read_text() or "c1/1.jpg 0\n" in d.list_file.read_text() for d in lists]
    assert holds == [True, True, False, True] and [r.skipped for r in results] == [1, 1, 0, 1]
    assert [r.written for r in results] == [59, 59, 23, 89]
    for d, held in zip(lists, holds):
        assert (d.out_dir / "skipped.txt").read_text().startswith("c1/1.jpg\t") == held
        _same_as_alone(d.out_dir, images, options, tmp_path / "alone" / d.out_dir.name)


def _prepare(root: Path, data: Path, *extra: str):
    return CliRunner().invoke(cli, ["prepare", "--train-dir", str(root / "train"), "--val-dir", str(root / "val"),
                                    "--devkit", str(root / "devkit"), "--experiments", "random,netbase,reduced",
                                    "--splits", "0", "--out", str(data), "--resize", "16", "--num-classes", "10", *extra])


@pytest.fixture
def imagenet(tmp_path):
    wnids, truth = imagenet_tree(tmp_path, 10, 3, 20, size=20)
    write_devkit(tmp_path / "devkit", wnids, truth)
    return tmp_path


def test_prepare_plans_the_disk_and_writes_every_dataset_of_the_experiments(imagenet):
    data = imagenet / "data"
    result = _prepare(imagenet, data)
    assert result.exit_code == 0, result.output
    for name in DATASETS:
        assert any(line.startswith(f"{name} ") for line in result.output.splitlines())  # its disk plan
        _same_as_alone(data / name, imagenet / ("train" if name.endswith("_train") else "val"), BuildOptions(resize=16),
                       imagenet / "alone" / name)
    assert "(building raw)" in result.output and "which has" in result.output
    assert "natural/man-made halves left out" in result.output
    assert "(0 built now, " in _prepare(imagenet, data).output  # run again: all there


def test_prepare_takes_a_tree_of_other_than_1000_wnid_folders_only_when_told(imagenet):
    args = ["prepare", "--train-dir", str(imagenet / "train"), "--val-dir", str(imagenet / "val"), "--devkit",
            str(imagenet / "devkit"), "--experiments", "random", "--splits", "0", "--out", str(imagenet / "data")]
    result = CliRunner().invoke(cli, args)
    _one_line_error(result, "its labels give 10 classes, not ImageNet's 1000", "--num-classes 10")
    assert not list(imagenet.glob("data/*/lmdb*")) and not list(imagenet.glob("data/half*"))


def test_prepare_refuses_a_disk_too_small_before_writing_any_lmdb(imagenet, small_disk):
    mount, _ = small_disk
    result = _prepare(imagenet, mount / "data", "--resize", "128")  # 50 KB per image, 2 MB of disk
    _one_line_error(result, "the LMDBs need", f"more on the disk of {mount}", "free space, or build fewer experiments",
                    "--encoded would need about")
    assert not list(mount.glob("data/*/lmdb*"))


def test_a_killed_pass_resumes_and_ends_as_make_lmdb_alone(imagenet):
    data = imagenet / "data"
    script = ("import time, sys\nfrom caffe_transfer.data.lmdb.decode import Converter\nconvert = Converter.chunk\n"
              "def slowly(self, chunk, slot):\n    time.sleep(0.05)\n    return convert(self, chunk, slot)\n"
              "Converter.chunk = slowly\nfrom caffe_transfer.data.lmdb import writer\nwriter.BATCH = 16\n"
              "from caffe_transfer.cli import cli\ncli(sys.argv[1:])\n")
    cmd = [sys.executable, "-c", script, "prepare", "--train-dir", str(imagenet / "train"), "--val-dir",
           str(imagenet / "val"), "--devkit", str(imagenet / "devkit"), "--experiments", "random,netbase,reduced",
           "--splits", "0", "--out", str(data), "--resize", "16", "--num-classes", "10", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if sum(_committed(p) for p in data.glob("*_train/lmdb.partial")) >= 20:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the pass finished before it could be killed"
    assert not list(data.glob("*/COMPLETE"))
    result = _prepare(imagenet, data)
    assert result.exit_code == 0, result.output
    for name in DATASETS:
        _same_as_alone(data / name, imagenet / ("train" if name.endswith("_train") else "val"), BuildOptions(resize=16),
                       imagenet / "alone" / name)


def _committed(partial: Path) -> int:
    """Images committed to a half-built LMDB."""
    import lmdb

    try:
        env = lmdb.open(str(partial), readonly=True, lock=False, max_dbs=2)
    except lmdb.Error:
        return 0  # not there yet, or being created this instant
    try:
        return max(0, env.stat()["entries"] - 1)  # less the progress sub-database's name
    finally:
        env.close()


def test_gen_refuses_leveldb_which_neither_make_lmdb_nor_this_caffe_supports(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["gen", "-t", "AnB", "--n", "3", "--split", "0", "--backend", "leveldb",
                                      "--out", str(out)])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "backend 'leveldb': expected lmdb: make-lmdb writes LMDBs only" in result.output
    assert not out.exists()


def test_a_pass_stopped_between_two_lmdbs_commits_resumes_each_from_its_own_progress(tmp_path, monkeypatch):
    """The LMDBs of a pass commit one after the other: stopped in between, some are a batch ahead
    of the others. Run again, each skips what it holds and ends as make-lmdb alone."""
    from caffe_transfer.data.lmdb import writer

    images = tmp_path / "img"
    whole = _jpegs(images, 120, (24, 18))
    lines = whole.read_text().splitlines(keepends=True)
    lists = []
    for name, keep in (("a", lambda i: i % 3 != 0), ("b", lambda i: i % 2 == 0), ("c", lambda i: True)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "files.txt").write_text("".join(line for i, line in enumerate(lines) if keep(i)))
        lists.append(Dataset(tmp_path / name / "files.txt", tmp_path / name))
    monkeypatch.setattr(writer, "BATCH", 20)
    poke, calls = writer.Flusher.poke, []

    def stop_after_the_fifth_commit(self):  # round 2, after the 2nd of 3 LMDBs committed
        calls.append(self)
        if len(calls) == 5:
            raise KeyboardInterrupt
        poke(self)

    monkeypatch.setattr(writer.Flusher, "poke", stop_after_the_fifth_commit)
    options = BuildOptions(resize=16, workers=1)
    with pytest.raises(KeyboardInterrupt):
        build_many([(images, lists)], options, progress=False)
    monkeypatch.undo()
    progress = [_state_next(d.out_dir / "lmdb.partial") for d in lists]
    assert progress[0] == progress[1] > progress[2] > 0  # a and b a round ahead of c
    build_many([(images, lists)], options, progress=False)
    for d in lists:
        _same_as_alone(d.out_dir, images, options, tmp_path / "alone" / d.out_dir.name)


def _state_next(partial: Path) -> int:
    import lmdb

    env = lmdb.open(str(partial), readonly=True, lock=False, max_dbs=2)
    try:
        with env.begin(db=env.open_db(b"caffe-transfer-progress", create=False)) as txn:
            return json.loads(txn.get(b"state"))["next"]
    finally:
        env.close()


def test_datalayer_benchmark_prints_both_kinds_at_each_thread_count(tmp_path):
    bench = Path(__file__).resolve().parent.parent / "tools" / "bench_datalayer.py"
    out = subprocess.run([sys.executable, str(bench), "--count", "16", "--batch", "8", "--seconds", "0.3",
                          "--rounds", "1", "--threads", "0,2", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    for kind in ("raw", "encoded"):
        section = out.split(f"  {kind} ")[1]
        assert re.match(r" +[\d.]+ KB per image", section), out
        assert re.search(r"stock loop +\d+ images/s +1\.00x stock", section), out
        assert re.search(r"2 threads +\d+ images/s +[\d.]+x stock", section), out


@pytest.mark.slow
def test_prepare_benchmark_runs_and_prints_the_goal(tmp_path):
    bench = Path(__file__).resolve().parent.parent / "tools" / "bench_prepare.py"
    out = subprocess.run([sys.executable, str(bench), "--per-class", "1", "--encoded", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert re.search(r"one pass / 10 runs: [\d.]+x less CPU \(goal >= 4x\)", out), out
