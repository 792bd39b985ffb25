"""ImageNet as it comes: val labels from the devkit (its own class order), Kaggle's CSV or a
NAME LABEL file, all mapped to Caffe's label (the wnid's sorted index); whole lists and splits
that refuse what would silently train the wrong thing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from caffe_transfer.cli import cli
from caffe_transfer.data import splits


def write_devkit(folder: Path, wnids: list[str], val_wnids: list[str], seed: int = 0) -> dict[str, int]:
    """An ILSVRC2012 devkit: meta.mat whose ILSVRC2012_IDs number the leaf synsets in an order of
    their own (a permutation of the sorted wnids), followed by internal synsets, as the real one
    has; and the ground truth, one ID per val image. Returns wnid -> ILSVRC2012_ID."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    leaves = [wnids[i] for i in rng.permutation(len(wnids))]
    ids = {wnid: i + 1 for i, wnid in enumerate(leaves)}
    internal = [f"n9{i:07d}" for i in range(max(2, len(wnids) // 10))]
    rows = [(ids[w], w, f"class {w}", 0, np.zeros((1, 0))) for w in leaves]
    rows += [(len(leaves) + 1 + i, w, "a group", 3, np.array([[1, 2, 3]])) for i, w in enumerate(internal)]
    synsets = np.empty((len(rows), 1), dtype=[(name, "O") for name in
                                               ("ILSVRC2012_ID", "WNID", "words", "num_children", "children")])
    for i, row in enumerate(rows):
        synsets[i, 0] = row
    (folder / "data").mkdir(parents=True)
    savemat(str(folder / "data" / "meta.mat"), {"synsets": synsets})
    (folder / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{ids[w]}\n" for w in val_wnids))
    return ids


def val_name(i: int) -> str:
    return f"ILSVRC2012_val_{i + 1:08d}.JPEG"


def imagenet_tree(root: Path, classes: int, per_class: int, val: int, size: int = 8, seed: int = 0):
    """train/<wnid>/<image> and a flat val/ folder of tiny JPEGs (every class among them where
    val >= classes), and each val image's true wnid."""
    rng = np.random.default_rng(seed)
    wnids = sorted(f"n{int(x):08d}" for x in rng.choice(10 ** 8, classes, replace=False))
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.roll(pixels, c + i, axis=0)).save(root / "train" / wnid / f"{wnid}_{i}.JPEG")
    (root / "val").mkdir()
    truth = [wnids[int(i) % classes] for i in rng.permutation(val)]  # every class, where val >= classes
    for i in range(val):
        Image.fromarray(np.roll(pixels, i, axis=1)).save(root / "val" / val_name(i))
    return wnids, truth


@pytest.fixture
def tree(tmp_path):
    wnids, truth = imagenet_tree(tmp_path, 12, 2, 30)
    return tmp_path, wnids, truth


def _lists(root: Path, *args: str):
    return CliRunner().invoke(cli, ["lists", "--train-dir", str(root / "train"), "--val-dir", str(root / "val"),
                                    "--out", str(root / "lists"), *args])


def _caffe_labels(wnids: list[str], truth: list[str]) -> str:
    """whole_valid.txt as it must be: Caffe's label is the wnid's index in sorted order."""
    return "".join(f"{val_name(i)} {wnids.index(w)}\n" for i, w in enumerate(truth))


def test_devkit_labels_are_mapped_to_caffes_through_the_wnids(tree):
    root, wnids, truth = tree
    ids = write_devkit(root / "devkit", wnids, truth)
    assert [ids[w] - 1 for w in wnids] != list(range(len(wnids)))  # the devkit's order is not Caffe's
    result = _lists(root, "--devkit", str(root / "devkit"))
    assert result.exit_code == 0, result.output
    assert (root / "lists" / "whole_valid.txt").read_text() == _caffe_labels(wnids, truth)


def test_kaggle_solution_and_name_wnid_and_name_label_files_give_the_same_labels(tree):
    root, wnids, truth = tree
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"{val_name(i)[:-5]},{w} 1 2 30 40 {w} 3 4 20 20 \n" for i, w in reversed(list(enumerate(truth)))))
    (root / "wnids.txt").write_text("".join(f"{val_name(i)} {w}\n" for i, w in enumerate(truth)))
    (root / "val.txt").write_text(_caffe_labels(wnids, truth))
    for args in (["--val-solution", str(root / "LOC_val_solution.csv")], ["--val-labels", str(root / "wnids.txt")],
                 ["--val-labels", str(root / "val.txt")]):
        (root / "lists" / "whole_valid.txt").unlink(missing_ok=True)
        result = _lists(root, *args)
        assert result.exit_code == 0, result.output
        assert (root / "lists" / "whole_valid.txt").read_text() == _caffe_labels(wnids, truth), args


def _bad(root: Path, wnids: list[str], truth: list[str], case: str) -> list[str]:
    """The arguments of a bad val labelling."""
    lines = [f"{val_name(i)} {wnids.index(w)}" for i, w in enumerate(truth)]
    labels = root / "labels.txt"
    if case == "bare numbers":  # the devkit's ground truth given as if it were Caffe's labels
        ids = write_devkit(root / "devkit", wnids, truth)
        labels.write_text("".join(f"{ids[w]}\n" for w in truth))
    elif case == "name not there":
        labels.write_text("\n".join(lines + ["ILSVRC2012_val_00099999.JPEG 3"]) + "\n")
    elif case == "unlabelled image":
        labels.write_text("\n".join(lines[:-1]) + "\n")
    elif case == "labelled twice":
        labels.write_text("\n".join(lines + [f"{val_name(0)} 1"]) + "\n")
    elif case == "label out of range":
        labels.write_text("\n".join(lines[:-1] + [f"{val_name(len(truth) - 1)} {len(wnids)}"]) + "\n")
    elif case == "unknown wnid":
        labels.write_text("\n".join(lines[:-1] + [f"{val_name(len(truth) - 1)} n99999999"]) + "\n")
    elif case == "devkit class without a folder":
        write_devkit(root / "devkit", wnids + ["n00000001"], truth[:-1] + ["n00000001"])
        return ["--devkit", str(root / "devkit")]
    elif case == "no devkit":
        return ["--devkit", str(root)]
    elif case == "not Kaggle's CSV":
        labels.write_text("name,label\n" + "".join(f"{line.replace(' ', ',')}\n" for line in lines))
        return ["--val-solution", str(labels)]
    elif case == "two sources":
        labels.write_text("\n".join(lines) + "\n")
        (root / "devkit").mkdir(exist_ok=True)
        return ["--val-labels", str(labels), "--devkit", str(root / "devkit")]
    return ["--val-labels", str(labels)]


@pytest.mark.parametrize("case, needle", [
    ("bare numbers", "a bare number: the devkit's ILSVRC2012_validation_ground_truth.txt numbers classes in its own "
                     "order, not Caffe's; give --devkit DIR"),
    ("name not there", "ILSVRC2012_val_00099999.JPEG is not an image in"),
    ("unlabelled image", "1 images of"),
    ("labelled twice", "is labelled twice"),
    ("label out of range", "label 12 outside 0..11"),
    ("unknown wnid", "'n99999999' is neither a label nor a class folder's name"),
    ("devkit class without a folder", "1 of its classes have no folder among the 12 train classes (the first: "
                                      "n00000001)"),
    ("no devkit", "no data/meta.mat; expected the ILSVRC2012 devkit folder"),
    ("not Kaggle's CSV", "header 'name,label', expected 'ImageId,PredictionString'"),
    ("two sources", "--val-labels and --devkit: give one source of val labels"),
])
def test_bad_val_labels_are_one_line_errors_and_nothing_is_overwritten(case, needle, tree):
    root, wnids, truth = tree
    (root / "lists").mkdir()
    (root / "lists" / "whole_valid.txt").write_text("the user's own\n")
    result = _lists(root, *_bad(root, wnids, truth, case))
    assert result.exit_code == 1 and result.output.count("\n") == 1 and needle in result.output, result.output
    assert (root / "lists" / "whole_valid.txt").read_text() == "the user's own\n"
    assert not (root / "lists" / "whole_train.txt").exists()


# --- splits ---------------------------------------------------------------------------------------
def _whole(path: Path, classes: int, per_class: int = 2) -> Path:
    path.write_text("".join(f"c{c}/{i}.jpg {c}\n" for c in range(classes) for i in range(per_class)))
    return path


def _splits(*args) -> object:
    return CliRunner().invoke(cli, ["splits", *map(str, args)])


def test_a_list_of_10_classes_is_not_split_as_1000(tmp_path):
    whole = _whole(tmp_path / "whole.txt", 10)
    result = _splits("--whole-list", whole, "--subset", "train", "--out", tmp_path / "lists", "--num-classes", 1000)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "has 10 classes (labels 0..9), not --num-classes 1000: give --num-classes 10, or leave it out" in result.output
    assert not (tmp_path / "lists").exists()


def test_the_class_count_is_inferred_and_said_and_natman_is_only_for_imagenet(tmp_path):
    whole = _whole(tmp_path / "whole.txt", 10)
    result = _splits("--whole-list", whole, "--subset", "valid", "--out", tmp_path / "lists")
    assert result.exit_code == 0, result.output
    assert "10 classes (inferred from the labels 0..9)" in result.output
    assert "natural/man-made halves left out: they split ImageNet's 1000 classes, this list has 10" in result.output
    folders = sorted(p.name for p in (tmp_path / "lists").iterdir())
    assert folders == sorted(f"half{s}{h}_valid" for s in "0123" for h in "AB")
    for s in "0123":
        classes = [sum(1 for _ in (tmp_path / "lists" / f"half{s}{h}_valid" / "idxmap.txt").open()) - 1 for h in "AB"]
        assert classes == [5, 5]
    imagenet = _whole(tmp_path / "imagenet.txt", 1000, 1)
    result = _splits("--whole-list", imagenet, "--subset", "valid", "--out", tmp_path / "in1k")
    assert result.exit_code == 0 and (tmp_path / "in1k" / "halfnatmanB_valid" / "files.txt").is_file()
    assert "inferred" in result.output and "left out" not in result.output


def test_an_imagenet_list_short_of_a_class_is_refused_unless_num_classes_says_so(tmp_path):
    """Paths in synset folders, labels 0..998: a train tree lacking a class folder, on which the
    paper's splits (defined on 1000 classes) would be other halves."""
    whole = tmp_path / "whole.txt"
    whole.write_text("".join(f"train/n{c:08d}/n{c:08d}_{i}.JPEG {c}\n" for c in range(999) for i in range(2)))
    result = _splits("--whole-list", whole, "--subset", "valid", "--out", tmp_path / "lists")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "its labels give 999 classes, not ImageNet's 1000" in result.output and "--num-classes 999" in result.output
    assert not (tmp_path / "lists").exists()
    result = _splits("--whole-list", whole, "--subset", "valid", "--out", tmp_path / "lists", "--num-classes", 999)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lists" / "half0A_valid" / "idxmap.txt").read_text().count("\n") == 1 + 999 // 2


@pytest.mark.parametrize("text, needle", [
    ("a.jpg 0\nb.jpg 1\na.jpg 1\n", "a.jpg is listed twice (labels 0 and 1): each image once"),
    ("a.jpg 0\nb.jpg 2\n", "1 of the classes 0..2 have no image (the first: 1)"),
    ("a.jpg 0\nb.jpg -1\n", "whole.txt:2: label -1: expected a class index 0 or more"),
])
def test_bad_whole_lists_are_refused(text, needle, tmp_path):
    (tmp_path / "whole.txt").write_text(text)
    result = _splits("--whole-list", tmp_path / "whole.txt", "--subset", "valid", "--out", tmp_path / "lists")
    assert result.exit_code == 1 and result.output.count("\n") == 1 and needle in result.output, result.output
    assert not (tmp_path / "lists").exists()


def test_check_reports_classes_without_images_and_conflicting_labels(tmp_path):
    whole = _whole(tmp_path / "whole.txt", 4)
    splits.write_splits(whole, "valid", tmp_path / "lists", custom={"halfxA": [0, 1], "halfxB": [2, 3]})
    assert splits.check_lists(tmp_path / "lists") == []
    a = tmp_path / "lists" / "halfxA_valid" / "files.txt"
    b = tmp_path / "lists" / "halfxB_valid" / "files.txt"
    a.write_text("".join(line for line in a.read_text().splitlines(keepends=True) if not line.endswith(" 1\n")))
    b.write_text(b.read_text() + "c0/0.jpg 0\nc2/0.jpg 0\n")  # c0/0.jpg: class 0 in A, class 2 here
    result = _splits("--check", tmp_path / "lists")
    assert result.exit_code == 1
    problems = [line for line in result.output.splitlines() if line.startswith("problem: ")]
    assert problems == ["problem: halfxA_valid: 1 classes of its idxmap have no image (the first: 1)",
                        "problem: c0/0.jpg is class 0 in halfxA_valid but class 2 in halfxB_valid",
                        "problem: halfxB_valid: c2/0.jpg is listed twice"], result.output
