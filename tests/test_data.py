"""Class splits, whole lists and LMDBs: byte-identical lists, and LMDBs that real Caffe reads."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from caffe_transfer.cli import cli
from caffe_transfer.common import caffe_env
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data import splits
from caffe_transfer.data.lmdb import (
    BuildOptions,
    build,
    datum_parts,
    load_image,
    order,
    read_mean,
    space,
    target,
    workers,
    writer,
)
from caffe_transfer.data.lmdb.datum import relabel, relabel_in_place, write_mean
from caffe_transfer.data.lmdb.decode import Converter

HALF0A_VALID_MD5 = "2f10009e20d77eb7007cf70674958b94"  # published by the authors


@pytest.fixture(scope="module")
def val_lists(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("lists")
    whole = reference / "ilsvrc12" / "data" / "whole_valid" / "files.txt"
    result = CliRunner().invoke(cli, ["splits", "--whole-list", str(whole), "--subset", "valid", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, whole


def test_half0A_val_list_has_the_authors_md5(val_lists):
    out, _ = val_lists
    assert hashlib.md5((out / "half0A_valid" / "files.txt").read_bytes()).hexdigest() == HALF0A_VALID_MD5


def test_the_ten_val_lists_follow_the_rules(val_lists):
    out, whole = val_lists
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"half{s}{h}_valid" for s in "0123" for h in "AB"] + ["halfnatmanA_valid", "halfnatmanB_valid"])
    entries = splits.read_list(whole)
    for s in "0123":
        a, b = splits.random_halves(int(s))
        for half, classes in (("A", a), ("B", b)):
            idxmap = (out / f"half{s}{half}_valid" / "idxmap.txt").read_text().splitlines()
            assert idxmap[0] == "# Orig_idx new_idx"
            assert [tuple(map(int, line.split())) for line in idxmap[1:]] == [(c, i) for i, c in enumerate(classes)]
            lines = (out / f"half{s}{half}_valid" / "files.txt").read_text().splitlines()
            new = {c: i for i, c in enumerate(classes)}
            assert lines == [f"{p} {new[label]}" for p, label in entries if label in new]
    assert splits.random_halves(0)[0][:10] == [0, 1, 2, 5, 9, 10, 15, 16, 17, 19]
    assert splits.check_lists(out) == []


def test_natman_and_wnids_shipped_in_splits_match_the_authors(reference):
    natural, manmade = splits.natman_halves()
    ref = reference / "ilsvrc12" / "data"
    assert natural == [int(x) for x in (ref / "half_nat_idx.txt").read_text().split()]
    assert manmade == [int(x) for x in (ref / "half_man_idx.txt").read_text().split()]
    assert splits.imagenet_wnids() == (reference / "ilsvrc12" / "synsets.txt").read_text().split()


def test_reduced_train_sets_keep_the_first_k_images_of_each_class(tmp_path):
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.arange(6000) % 1000)  # a whole list: every class has images
    whole = tmp_path / "whole_train.txt"
    whole.write_text("".join(f"n{label:08d}/img{i}.JPEG {label}\n" for i, label in enumerate(labels)))
    splits.write_splits(whole, "train", tmp_path / "lists")
    for k in (1, 5, 1300):
        lines = (tmp_path / "lists" / f"reduced{k:04d}_train" / "files.txt").read_text().splitlines()
        seen: dict[int, int] = {}
        expected = []
        for i, label in enumerate(labels):
            seen[label] = seen.get(label, 0) + 1
            if seen[label] <= k:
                expected.append(f"n{label:08d}/img{i}.JPEG {label}")
        assert lines == expected
    assert (tmp_path / "lists" / "half0B_train" / "files.txt").is_file()


def test_check_finds_overlapping_halves(tmp_path):
    whole = tmp_path / "w.txt"
    whole.write_text("".join(f"x{i}.jpg {i % 4}\n" for i in range(20)))
    (tmp_path / "a.txt").write_text("0\n1\n2\n")
    (tmp_path / "b.txt").write_text("2\n3\n")
    splits.write_splits(whole, "valid", tmp_path / "lists", custom={"halfxA": [0, 1, 2], "halfxB": [2, 3]}, num_classes=4)
    result = CliRunner().invoke(cli, ["splits", "--check", str(tmp_path / "lists")])
    assert result.exit_code == 1 and "share classes [2]" in result.output


def test_whole_lists_from_an_image_tree(tmp_path):
    for cls in ("n02", "n01"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8)).save(tmp_path / "train" / cls / f"{i}.JPEG")
            Image.new("RGB", (8, 8)).save(tmp_path / "val" / cls / f"v{i}.JPEG")
    result = CliRunner().invoke(cli, ["lists", "--train-dir", str(tmp_path / "train"), "--val-dir",
                                      str(tmp_path / "val"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "whole_train.txt").read_text() == "n01/0.JPEG 0\nn01/1.JPEG 0\nn02/0.JPEG 1\nn02/1.JPEG 1\n"
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("a.JPEG", "b.JPEG"):
        Image.new("RGB", (8, 8)).save(flat / name)
    (tmp_path / "labels.txt").write_text("a.JPEG n02\nb.JPEG 0\n")
    CliRunner().invoke(cli, ["lists", "--train-dir", str(tmp_path / "train"), "--val-dir", str(flat),
                             "--val-labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path)])
    assert (tmp_path / "whole_valid.txt").read_text() == "a.JPEG 1\nb.JPEG 0\n"


# --- LMDBs --------------------------------------------------------------------------------------
def _jpegs(root: Path, count: int, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(7)
    lines = []
    for i in range(count):
        cls = i % 3
        (root / f"c{cls}").mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        arr[..., cls] = 40 * cls
        Image.fromarray(arr).save(root / f"c{cls}" / f"{i}.jpg", quality=92)
        lines.append(f"c{cls}/{i}.jpg {cls}\n")
    (root / "list.txt").write_text("".join(lines))
    return root / "list.txt"


@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "encoded"])
def test_caffe_reads_the_lmdb_with_the_expected_pixels_labels_and_mean(encoded, tmp_path, caffe):
    images = tmp_path / "img"
    list_file = _jpegs(images, 12, (40, 30))
    result = build(list_file, images, tmp_path / "db", BuildOptions(resize=0, encoded=encoded), progress=False)
    assert result.written == 12
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(f'''layer {{ name: "data" type: "Data" top: "data" top: "label"
  transform_param {{ crop_size: 24 mirror: false mean_file: "{result.mean}" }}
  data_param {{ source: "{result.lmdb}" batch_size: 12 backend: LMDB }} }}''')
    net = caffe.Net(str(net_file), caffe.TEST)
    net.forward()
    entries = splits.read_list(list_file)
    stored = [entries[p] for p in order(len(entries), True, 0)]
    mean = read_mean(result.mean)
    for i, (rel, label) in enumerate(stored):
        with Image.open(images / rel) as img:
            bgr = np.asarray(img.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
        expected = (bgr - mean)[:, 3:27, 8:32]  # Caffe's centre crop of 24 from 30x40 in TEST
        assert net.blobs["label"].data[i] == label
        np.testing.assert_array_equal(net.blobs["data"].data[i], expected)


@pytest.mark.parametrize("flags, options", [
    ([], BuildOptions(resize=32, shuffle=False)),
    (["--gray"], BuildOptions(resize=32, shuffle=False, gray=True)),
    (["--encoded", "--encode_type=jpg"], BuildOptions(resize=32, shuffle=False, encoded=True)),
], ids=["raw", "gray", "encoded"])
def test_datums_are_those_of_convert_imageset(flags, options, tmp_path, pb2):
    """The authors made their LMDBs with convert_imageset: the same list gives the same Datums
    (pixels decoded and resized by OpenCV, or the same re-encoded JPEG bytes), a JPEG that is
    rotated by its EXIF orientation included."""
    images = tmp_path / "img"
    list_file = _jpegs(images, 24, (50, 37))
    with Image.open(images / "c0" / "0.jpg") as img:
        exif = img.getexif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        img.save(images / "c0" / "rotated.jpg", exif=exif.tobytes(), quality=92)
    list_file.write_text(list_file.read_text() + "c0/rotated.jpg 0\n")
    ours = build(list_file, images, tmp_path / "ours", options, progress=False)
    theirs = tmp_path / "theirs"
    caffe_env.run_tool("convert_imageset", "--resize_height=32", "--resize_width=32", "--backend=lmdb", *flags,
                       f"{images}/", list_file, theirs)
    ours_items, theirs_items = _contents(ours.lmdb), _contents(theirs)
    assert ours_items.keys() == theirs_items.keys() and len(ours_items) == 25
    for key, value in theirs_items.items():
        a, b = pb2.Datum(), pb2.Datum()
        a.ParseFromString(ours_items[key])
        b.ParseFromString(value)
        assert (a.channels, a.height, a.width, a.label, a.encoded) == (b.channels, b.height, b.width, b.label, b.encoded)
        assert a.data == b.data, key


def test_mean_matches_compute_image_mean(tmp_path):
    images = tmp_path / "img"
    list_file = _jpegs(images, 30, (64, 48))
    result = build(list_file, images, tmp_path / "db", BuildOptions(resize=32), progress=False)
    theirs = tmp_path / "caffe_mean.binaryproto"
    caffe_env.run_tool("compute_image_mean", "--backend=lmdb", result.lmdb, theirs)
    np.testing.assert_allclose(read_mean(result.mean), read_mean(theirs), rtol=1e-6, atol=1e-4)
    assert read_mean(result.mean).shape == (3, 32, 32)


def test_raw_datums_from_shared_memory_are_caffe_pb2s_own_bytes(tmp_path, pb2):
    """Raw Datums of a fixed size are serialized by hand into shared memory: the bytes must be
    exactly what caffe_pb2 writes, with the pixels of the resized image."""
    images = tmp_path / "img"
    list_file = _jpegs(images, 40, (50, 37))
    result = build(list_file, images, tmp_path / "db", BuildOptions(resize=32), progress=False)
    entries = dict(splits.read_list(list_file))
    stored = _contents(result.lmdb)
    assert len(stored) == 40
    for key, value in stored.items():
        rel = key.decode().split("_", 1)[1]
        datum = pb2.Datum()
        datum.ParseFromString(value)
        assert datum.SerializeToString() == value
        assert (datum.channels, datum.height, datum.width, datum.label) == (3, 32, 32, entries[rel])
        expected = load_image(images / rel, 32).transpose(2, 0, 1)
        assert np.frombuffer(datum.data, dtype=np.uint8).tobytes() == expected.tobytes()
    for c, h, w, label in ((1, 28, 28, 0), (3, 256, 256, 999), (3, 1, 70000, 2 ** 31 - 1)):
        head, tail = datum_parts(c, h, w, label)
        data = bytes(c * h * w)
        assert head + data + tail == pb2.Datum(channels=c, height=h, width=w, data=data, label=label).SerializeToString()
    total = np.arange(3 * 5 * 4, dtype=np.float64).reshape(3, 5, 4) * 1.7
    write_mean(tmp_path / "mean.binaryproto", total, 3)  # its floats appended by hand: caffe_pb2's bytes
    blob = pb2.BlobProto(num=1, channels=3, height=5, width=4)
    blob.data.extend((total / 3).astype(np.float32).ravel().tolist())
    assert (tmp_path / "mean.binaryproto").read_bytes() == blob.SerializeToString()
    for datum in (pb2.Datum(channels=3, height=2, width=2, data=bytes(12), label=7),
                  pb2.Datum(data=b"\xff\xd8\xff jpeg", label=300, encoded=True)):
        for new in (0, 5, 2 ** 31 - 1, -1):
            expected = pb2.Datum.FromString(datum.SerializeToString())
            expected.label = new
            assert relabel(memoryview(datum.SerializeToString()), datum.label, new) == expected.SerializeToString()
            old = datum.SerializeToString()
            cell = memoryview(bytearray(old + b"\0" * 16))  # in a slot's cell: relabelled where it lies
            end = relabel_in_place(cell, len(old), datum.label, new)
            assert cell[:end].tobytes() == expected.SerializeToString()
            tight = memoryview(bytearray(old))  # no room for a longer label: left as it was
            if len(expected.SerializeToString()) > len(old):
                assert relabel_in_place(tight, len(old), datum.label, new) is None
                assert tight.tobytes() == old
            else:
                assert relabel_in_place(tight, len(old), datum.label, new) == end
                assert tight[:end].tobytes() == expected.SerializeToString()


def _contents(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = dict(txn.cursor())
    env.close()
    return items


def _with_reference(tmp_path: Path, count: int, size: tuple[int, int], options: BuildOptions):
    """JPEGs, their list, and the uninterrupted build of them to compare with."""
    images = tmp_path / "img"
    list_file = _jpegs(images, count, size)
    return list_file, images, build(list_file, images, tmp_path / "whole", options, progress=False)


def test_killed_build_resumes_with_every_image_once(tmp_path):
    list_file, images, reference = _with_reference(tmp_path, 1500, (96, 72), BuildOptions(resize=64))
    out = tmp_path / "killed"
    exe = Path(sys.executable).parent / "caffe-transfer"
    cmd = [str(exe), "make-lmdb", str(list_file), str(images), str(out), "--resize", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    killed = False
    while time.time() < deadline and proc.poll() is None:
        data = out / "lmdb.partial" / "data.mdb"
        if data.is_file() and data.stat().st_size > 0:
            env = lmdb.open(str(out / "lmdb.partial"), readonly=True, lock=False, max_dbs=2)
            with env.begin() as txn:
                n = txn.stat(env.open_db(b"caffe-transfer-progress", txn=txn, create=False))["entries"] if \
                    txn.get(b"caffe-transfer-progress") is not None else 0
                count = txn.stat()["entries"]
            env.close()
            if n and count > 300:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.01)
    proc.wait()
    assert killed, "the build finished before it could be killed"
    assert not (out / "COMPLETE").exists()
    subprocess.run(cmd, check=True, capture_output=True)
    assert (out / "COMPLETE").is_file()
    _assert_same(out / "lmdb", out / "mean.binaryproto", reference)


def _assert_same(lmdb_dir: Path, mean: Path, reference) -> None:
    assert _contents(lmdb_dir) == _contents(reference.lmdb)
    np.testing.assert_array_equal(read_mean(mean), read_mean(reference.mean))


def _killing(convert, dies):
    """`Converter.chunk` in a worker that dies, as a decoder crashing or the OOM killer would end
    it, when `dies(chunk)`; every process that converts images runs it, one image alone too."""
    def converting(self, chunk, slot):
        if dies(chunk):
            os.write(2, b"decoder: out of its mind\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return convert(self, chunk, slot)
    return converting


def _mean_of(contents: dict[bytes, bytes], pb2) -> np.ndarray:
    """The mean image of an LMDB's Datums, decoded by OpenCV where they are JPEGs."""
    total = None
    for value in contents.values():
        datum = pb2.Datum.FromString(value)
        pixels = (cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR).transpose(2, 0, 1)
                  if datum.encoded else np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height,
                                                                                    datum.width))
        total = pixels.astype(np.float64) if total is None else total + pixels
    return (total / len(contents)).astype(np.float32)


@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "encoded"])
def test_an_image_that_kills_its_worker_is_skipped_and_the_rest_written(encoded, tmp_path, monkeypatch, pb2):
    options = BuildOptions(resize=32, encoded=encoded)
    list_file, images, reference = _with_reference(tmp_path, 700, (48, 36), options)
    monkeypatch.setattr(Converter, "chunk", _killing(Converter.chunk,
                                                                 lambda chunk: any(p == 600 for p, _, _ in chunk)))
    culprit = splits.read_list(list_file)[order(700, True, 0)[600]][0]
    result = build(list_file, images, tmp_path / "out", options, progress=False)
    assert (result.written, result.skipped) == (699, 1)
    assert (tmp_path / "out" / "skipped.txt").read_text() == (
        f"{culprit}\tthe decoder died on it (exit code -9, last words: decoder: out of its mind)\n")
    expected = {key: value for key, value in _contents(reference.lmdb).items() if not key.startswith(b"00000600_")}
    assert len(expected) == 699 and _contents(result.lmdb) == expected  # the other 15 of its chunk too
    np.testing.assert_array_equal(read_mean(result.mean), _mean_of(expected, pb2))


def test_an_image_that_a_decoder_sticks_on_is_skipped(tmp_path, monkeypatch):
    options = BuildOptions(resize=32)
    list_file, images, reference = _with_reference(tmp_path, 400, (48, 36), options)
    convert = Converter.chunk

    def stuck_on_300(self, chunk, slot):  # a decoder in an endless loop on one file
        if any(p == 300 for p, _, _ in chunk):
            os.write(2, b"decoder: going round in circles\n")
            time.sleep(3600)
        return convert(self, chunk, slot)

    monkeypatch.setattr(Converter, "chunk", stuck_on_300)
    monkeypatch.setattr(workers, "STUCK_SECONDS", 1.0)
    culprit = splits.read_list(list_file)[order(400, True, 0)[300]][0]
    result = build(list_file, images, tmp_path / "out", options, progress=False)
    assert (result.written, result.skipped) == (399, 1)
    assert (tmp_path / "out" / "skipped.txt").read_text() == (
        f"{culprit}\tthe decoder died on it (stuck for more than 1 s, killed, last words: decoder: going round in "
        "circles)\n")
    assert _contents(result.lmdb) == {key: value for key, value in _contents(reference.lmdb).items()
                                      if not key.startswith(b"00000300_")}


def test_a_worker_killed_once_costs_no_image(tmp_path, monkeypatch):
    options = BuildOptions(resize=32)
    list_file, images, reference = _with_reference(tmp_path, 700, (48, 36), options)
    flag = tmp_path / "killed"

    def once_at_600(chunk):  # the OOM killer, say: the image is not to blame
        if any(p == 600 for p, _, _ in chunk) and not flag.exists():
            flag.touch()
            return True
        return False

    monkeypatch.setattr(Converter, "chunk", _killing(Converter.chunk, once_at_600))
    result = build(list_file, images, tmp_path / "out", options, progress=False)
    assert flag.exists() and (result.written, result.skipped) == (700, 0)
    _assert_same(result.lmdb, result.mean, reference)


def test_workers_dying_on_every_image_is_an_error_and_the_build_goes_on(tmp_path, monkeypatch):
    options = BuildOptions(resize=32)
    list_file, images, reference = _with_reference(tmp_path, 700, (48, 36), options)
    broken = tmp_path / "broken"

    def from_600_on_everything(chunk):  # something in the machine, not in the images, from then on
        if broken.exists() or any(p == 600 for p, _, _ in chunk):
            broken.touch()
            return True
        return False

    monkeypatch.setattr(Converter, "chunk", _killing(Converter.chunk, from_600_on_everything))
    out = tmp_path / "crashed"
    chunk = workers.CHUNK
    first = splits.read_list(list_file)[order(700, True, 0)[600 // chunk * chunk]][0]  # of the chunk with 600
    with pytest.raises(CaffeTransferError, match=rf"worker \d died \(exit code -9, last words: decoder: out of its "
                                                 rf"mind\) converting the {chunk} images from {first} on, and so did "
                                                 r"a process for each of them alone, and one for \S+, which "
                                                 r"converted before: not the images' fault; what was written is "
                                                 r"kept, run again to go on$") as err:
        build(list_file, images, out, options, progress=False)
    assert "\n" not in str(err.value)
    env = lmdb.open(str(out / "lmdb.partial"), readonly=True, lock=False, max_dbs=2)
    assert env.stat()["entries"] > writer.BATCH  # what was committed before the crash is kept
    env.close()
    monkeypatch.undo()
    again = build(list_file, images, out, options, progress=False)
    assert (again.written, again.skipped) == (700, 0)  # none was taken for a bad image
    _assert_same(again.lmdb, again.mean, reference)


@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "encoded"])
def test_the_map_grows_as_needed(encoded, tmp_path, monkeypatch):
    options = BuildOptions(resize=64, encoded=encoded)
    list_file, images, whole = _with_reference(tmp_path, 300, (96, 72), options)
    monkeypatch.setattr(target, "INITIAL_MAP_SIZE", 64 * 1024)  # a few hundred KB of Datums
    grown = build(list_file, images, tmp_path / "grown", options, progress=False)
    assert grown.written == 300
    _assert_same(grown.lmdb, grown.mean, whole)


def test_bad_images_are_skipped_and_reported(tmp_path):
    images = tmp_path / "img"
    list_file = _jpegs(images, 6, (40, 30))
    good = (images / "c0" / "0.jpg").read_bytes()
    (images / "c0" / "corrupt.jpg").write_bytes(good[:20] + b"\x00" * 200 + good[220:])
    (images / "c0" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (images / "c0" / "notes.jpg").write_text("not an image at all")
    scan = good.find(b"\xff\xda")  # stray bytes before the scan: libjpeg warns, and decodes it
    (images / "c0" / "warns.jpg").write_bytes(good[:scan] + b"\x00\x01\x02" + good[scan:])
    bad = ["c0/corrupt.jpg", "c0/truncated.jpg", "c0/notes.jpg", "c0/missing.jpg"]
    list_file.write_text(list_file.read_text() + "".join(f"{b} 0\n" for b in bad + ["c0/warns.jpg"]))
    result = build(list_file, images, tmp_path / "db", BuildOptions(resize=32), progress=False)
    reported = [line.split("\t")[0] for line in (tmp_path / "db" / "skipped.txt").read_text().splitlines()]
    assert result.written + result.skipped == 11 and result.skipped == len(reported)
    assert {"c0/truncated.jpg", "c0/notes.jpg", "c0/missing.jpg"} <= set(reported)
    assert set(reported) <= set(bad)
    assert len(_contents(result.lmdb)) == result.written
    warned = dict(line.split("\t") for line in (tmp_path / "db" / "warnings.txt").read_text().splitlines())
    assert result.warned == len(warned) and set(warned) <= set(bad) | {"c0/warns.jpg"} and not set(warned) & set(reported)
    assert warned["c0/warns.jpg"] == "Corrupt JPEG data: 3 extraneous bytes before marker 0xda"
    cli_run = subprocess.run([str(Path(sys.executable).parent / "caffe-transfer"), "make-lmdb", str(list_file),
                              str(images), str(tmp_path / "cli"), "--resize", "32"],
                             capture_output=True, text=True, check=True)
    assert "c0/warns.jpg: written, with a decoder warning: Corrupt JPEG data" in cli_run.stderr  # named, above the bar
    assert "c0/notes.jpg: skipped: ValueError" in cli_run.stderr
    assert f"{result.warned} with decoder warnings (see {tmp_path / 'cli' / 'warnings.txt'})" in cli_run.stdout


def test_complete_lmdb_is_not_rebuilt_without_force(tmp_path):
    images = tmp_path / "img"
    list_file = _jpegs(images, 4, (40, 30))
    first = build(list_file, images, tmp_path / "db", BuildOptions(resize=32), progress=False)
    stamp = (first.lmdb / "data.mdb").stat().st_mtime_ns
    again = build(list_file, images, tmp_path / "db", BuildOptions(resize=32), progress=False)
    assert again.already_complete and (first.lmdb / "data.mdb").stat().st_mtime_ns == stamp
    forced = build(list_file, images, tmp_path / "db", BuildOptions(resize=32), force=True, progress=False)
    assert not forced.already_complete and forced.written == 4


@pytest.mark.parametrize("args, needle, code", [
    (["{list}", "{tmp}/nowhere", "{tmp}/out"], "'IMAGE_ROOT': Directory", 2),
    (["{tmp}/empty.txt", "{tmp}", "{tmp}/out"], "is empty", 1),
    (["{tmp}/none.txt", "{tmp}", "{tmp}/out"], "does not exist", 2),
])
def test_make_lmdb_errors_are_one_line(args, needle, code, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "list.txt").write_text("a.jpg 0\n")
    argv = [a.format(tmp=tmp_path, list=tmp_path / "list.txt") for a in args]
    result = CliRunner().invoke(cli, ["make-lmdb", *argv])
    assert result.exit_code == code and needle in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_lmdb_benchmark_runs_and_prints_ratios(tmp_path):
    bench = Path(__file__).resolve().parent.parent / "tools" / "bench_lmdb.py"
    out = subprocess.run([sys.executable, str(bench), "--count", "60", "--rounds", "1", "--workdir", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "make-lmdb raw / convert_imageset:" in out and "decode+resize limit:" in out
    assert "raw's writer alone caps it at" in out


# --- safe builds --------------------------------------------------------------------------------
def _make_lmdb(*args) -> object:
    return CliRunner().invoke(cli, ["make-lmdb", *map(str, args)])


def _one_line_error(result, *needles: str) -> None:
    """Exit 1 with one error line, the last (above it, on stderr, only the bar and skipped images)."""
    errors = [line for line in result.output.splitlines() if "Error" in line and "skipped:" not in line]
    assert result.exit_code == 1 and len(errors) == 1 and result.output.endswith(errors[0] + "\n"), result.output
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize("force", [[], ["--force"]], ids=["plain", "forced"])
def test_an_lmdb_make_lmdb_did_not_write_is_never_deleted(force, tmp_path):
    images = tmp_path / "img"
    list_file = _jpegs(images, 4, (40, 30))
    out = tmp_path / "out"
    out.mkdir()
    env = lmdb.open(str(out / "lmdb"), map_size=1 << 20)  # as convert_imageset leaves it
    with env.begin(write=True) as txn:
        txn.put(b"00000000_theirs", b"their datum")
    env.close()
    _one_line_error(_make_lmdb(list_file, images, out, "--resize", "16", *force),
                    f"{out / 'lmdb'} was not written by make-lmdb", "never deleted")
    assert _contents(out / "lmdb") == {b"00000000_theirs": b"their datum"}
    assert not (out / "COMPLETE").exists() and not (out / "lmdb.partial").exists()


@pytest.mark.parametrize("change, needle", [
    (["--resize", "24"], "--resize 16, not 24"),
    (["--gray"], "--gray False, not True"),
    (["--encoded"], "--encoded False, not True"),
    (["--seed", "3"], "--seed 0, not 3"),
    ("other list", "list contents"),
], ids=["resize", "gray", "encoded", "seed", "list"])
def test_a_complete_lmdb_run_again_with_other_settings_is_an_error_or_rebuilt_with_force(change, needle, tmp_path):
    images = tmp_path / "img"
    list_file = _jpegs(images, 6, (40, 30))
    out = tmp_path / "out"
    assert _make_lmdb(list_file, images, out, "--resize", "16").exit_code == 0
    before = _contents(out / "lmdb")
    flags = ["--resize", "16"]
    if change == "other list":
        list_file.write_text("".join(list_file.read_text().splitlines(keepends=True)[:4]))
    else:
        flags = [*flags, *change]
    _one_line_error(_make_lmdb(list_file, images, out, *flags), f"{out / 'lmdb'} was built with other settings",
                    needle, "--force rebuilds it")
    assert _contents(out / "lmdb") == before and (out / "COMPLETE").is_file()
    forced = _make_lmdb(list_file, images, out, *flags, "--force")
    assert forced.exit_code == 0, forced.output
    rebuilt = build(list_file, images, tmp_path / "fresh", BuildOptions(**_options(flags)), progress=False)
    assert _contents(out / "lmdb") == _contents(rebuilt.lmdb) != before


def _options(flags: list[str]) -> dict:
    """BuildOptions' fields for make-lmdb's flags (the last of a repeated one wins, as in click)."""
    values = {name: int(flags[len(flags) - 1 - flags[::-1].index(f"--{name}") + 1])
              for name in ("resize", "seed") if f"--{name}" in flags}
    values.update({name: True for name in ("gray", "encoded") if f"--{name}" in flags})
    return values


def test_a_half_built_lmdb_of_other_settings_is_kept_until_forced(tmp_path):
    list_file, images, reference = _with_reference(tmp_path, 40, (40, 30), BuildOptions(resize=16))
    out = tmp_path / "out"
    (out / "lmdb.partial").mkdir(parents=True)
    (out / "lmdb.partial" / "data.mdb").write_bytes(b"someone else's")
    _one_line_error(_make_lmdb(list_file, images, out, "--resize", "16"), "lmdb.partial was not written by make-lmdb")
    assert (out / "lmdb.partial" / "data.mdb").read_bytes() == b"someone else's"


def test_our_half_built_lmdb_of_other_settings_is_an_error_until_forced(tmp_path):
    images = tmp_path / "img"
    list_file = _jpegs(images, 8, (40, 30))
    out = tmp_path / "out"
    entries = splits.read_list(list_file)
    started = target.Target(list_file, out, entries, target.settings(list_file, entries, BuildOptions(resize=16),
                                                                     images))
    started.lock()
    started.open(force=False)  # as a build killed before its first commit leaves it
    started.close()
    started.unlock()
    _one_line_error(_make_lmdb(list_file, images, out, "--resize", "24"),
                    "lmdb.partial is a build with other settings (--resize 16, not 24)", "--force to start again")
    assert (out / "lmdb.partial" / "data.mdb").is_file()
    forced = _make_lmdb(list_file, images, out, "--resize", "24", "--force")
    assert forced.exit_code == 0 and json.loads((out / "COMPLETE").read_text())["resize"] == 24


def test_a_build_with_every_image_missing_fails_and_marks_nothing_complete(tmp_path):
    (tmp_path / "list.txt").write_text("a/1.jpg 0\na/2.jpg 1\nb/3.jpg 1\n")
    out = tmp_path / "out"
    _one_line_error(_make_lmdb(tmp_path / "list.txt", tmp_path, out),
                    "none of the 3 images of", "could be read (the first: ", "nothing was marked complete")
    assert not (out / "COMPLETE").exists() and not (out / "lmdb").exists() and not (out / "lmdb.partial").exists()
    assert len((out / "skipped.txt").read_text().splitlines()) == 3


def test_a_second_build_on_the_same_output_is_refused_by_the_lock(tmp_path, monkeypatch):
    images = tmp_path / "img"
    list_file = _jpegs(images, 200, (48, 36))
    out = tmp_path / "out"
    convert = Converter.chunk

    def slowly(self, chunk, slot):  # a build that takes its time: 13 chunks of 0.3 s
        time.sleep(0.3)
        return convert(self, chunk, slot)

    monkeypatch.setattr(Converter, "chunk", slowly)
    first = threading.Thread(target=build, args=(list_file, images, out, BuildOptions(resize=32, workers=1)),
                             kwargs={"progress": False})
    first.start()
    try:
        deadline = time.time() + 60
        while not (out / "lmdb.partial" / "data.mdb").is_file() and time.time() < deadline:
            time.sleep(0.01)
        second = subprocess.run([str(Path(sys.executable).parent / "caffe-transfer"), "make-lmdb", str(list_file),
                                 str(images), str(out), "--resize", "32"], capture_output=True, text=True)
        running = first.is_alive()
    finally:
        first.join()
    assert running, "the first build finished before the second started"
    assert second.returncode == 1 and second.stderr.count("\n") == 1, second.stderr
    assert f"{out} is being built by another make-lmdb (pid {os.getpid()})" in second.stderr
    assert json.loads((out / "COMPLETE").read_text())["written"] == 200


def test_the_lock_dies_with_its_build_not_with_a_worker_still_finishing_a_chunk(tmp_path):
    """A killed build's decoders may still be converting a chunk for a moment; run again at once,
    the build must not find its OUT_DIR locked by them."""
    import multiprocessing

    def target_of(out):
        return target.Target(tmp_path / "list.txt", out, [], {})

    first = target_of(tmp_path / "out")
    first.lock()
    context = multiprocessing.get_context("fork")
    started = context.Event()

    def decode():
        started.set()
        time.sleep(30)

    worker = context.Process(target=decode, daemon=True)
    worker.start()  # a decoder, forked while the lock is held
    try:
        assert started.wait(30)
        first.unlock()  # the build is gone (killed: the kernel closes its fds)
        again = target_of(tmp_path / "out")
        again.lock()
        again.unlock()
    finally:
        worker.kill()
        worker.join()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system of its own (tmpfs; needs root), grown with `grow(MB)`."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")

    def grow(mb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mb}m", str(mount)], check=True)

    yield mount, grow
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("resize", [64, 0], ids=["reserved", "sizes-vary"])
def test_a_full_disk_is_one_line_and_the_rerun_resumes(resize, tmp_path, small_disk):
    """Raw Datums of one size are reserved before any is written, so a disk too small fails at
    once; Datums whose sizes vary fill the disk as they are written, and fail there."""
    mount, grow = small_disk
    list_file, images, reference = _with_reference(tmp_path, 300, (96, 72), BuildOptions(resize=resize))  # 5-6 MB
    out = mount / "out"
    _one_line_error(_make_lmdb(list_file, images, out, "--resize", str(resize)), "no space left on the disk",
                    "run the same command again")
    assert not (out / "COMPLETE").exists()
    data = (out / "lmdb.partial" / "data.mdb").stat()
    if resize:
        assert data.st_size < 64 << 10, "records were written before the disk was found too small"
        assert data.st_blocks * 512 <= data.st_size + 4096, "the failed reservation's blocks were kept"
    else:
        assert data.st_size > 1 << 20, "the build did not get as far as filling the disk"
    grow(64)
    again = _make_lmdb(list_file, images, out, "--resize", str(resize))
    assert again.exit_code == 0, again.output
    _assert_same(out / "lmdb", out / "mean.binaryproto", reference)


def test_raw_datums_reserve_their_disk_before_they_are_written_and_give_back_the_rest(tmp_path):
    list_file = _jpegs(tmp_path / "img", 40, (96, 72))
    options = BuildOptions(resize=64)
    result = build(list_file, tmp_path / "img", tmp_path / "out", options, progress=False)
    entries = [(path, int(label)) for path, label in (line.split() for line in list_file.read_text().splitlines())]
    one = target.Target(list_file, tmp_path / "again", entries, {})
    reserved = space.reservation(one, options)
    finished = (result.lmdb / "data.mdb").stat()
    assert finished.st_size <= reserved < 1.2 * finished.st_size  # a bound on the records' pages, and a close one
    assert finished.st_blocks * 512 <= finished.st_size + 4096, "the unused reservation was kept past the end"
    one.lock()
    one.open(force=False)
    try:
        one.reserve(reserved)
        data = (one.partial / "data.mdb").stat()
        assert data.st_blocks * 512 >= reserved and data.st_size < 64 << 10  # taken, past the end
        need = space.estimate([(tmp_path / "img", [one])], options)[0]
        assert need.present >= need.raw, "a rerun's disk plan would count the reservation twice"
    finally:
        one.close()
        one.unlock()
    assert space.reservation(one, BuildOptions(resize=64, encoded=True)) == 0
    assert space.reservation(one, BuildOptions(resize=0)) == 0
