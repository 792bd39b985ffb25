"""Whole lists from an image tree: `whole_train.txt` and `whole_valid.txt`.

A tree laid out as `CLASS/IMAGE` (ImageNet's train folder, or any dataset) gives one `PATH LABEL`
line per image, with class indices in the sorted order of the class folder names (for ImageNet
that is the order of the wnids, i.e. Caffe's ILSVRC2012 label). Validation images come either in
the same layout, or flat in one folder labelled by the ILSVRC2012 devkit (`--devkit`), Kaggle's
LOC_val_solution.csv (`--val-solution`), or a file of `NAME WNID` or `NAME LABEL` lines (Caffe's
val.txt). A file of bare numbers (the devkit's ground truth, in its own class order) is refused:
guessing its meaning mislabels every image. Every image of the folder must be labelled exactly
once, by a label in range, and every name labelled must be there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.imagenet import devkit_val_wnids, solution_val_wnids

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")


def _image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _image(p))


NOT_CLASSES = ("lost+found",)  # folders a file system makes, never a class


def class_folders(root: str | Path, say: Callable[[str], object] = lambda line: None) -> list[str]:
    """The class folders of a tree, sorted: their order is the labels'. What is not a folder
    (files, links that lead nowhere or in a loop) and NOT_CLASSES are ignored, and `say` names
    them; a folder with no image is refused, as it would take a label and shift every one after it."""
    root = Path(root)
    if not root.is_dir():
        raise CaffeTransferError(f"image folder {root} does not exist")
    entries = sorted(root.iterdir())
    ignored = [p.name for p in entries if p.name in NOT_CLASSES or not p.is_dir()]
    classes = [p.name for p in entries if p.name not in ignored]
    if not classes:
        raise CaffeTransferError(f"{root} has no class folders: expected {root}/CLASS/IMAGE")
    empty = [name for name in classes if not any(_image(p) for p in (root / name).iterdir())]
    if empty:
        raise CaffeTransferError(f"{root}: {len(empty)} class folders hold no image ({', '.join(empty[:5])}"
                                 f"{', ...' if len(empty) > 5 else ''}): fill them or move them out of the tree")
    if ignored:
        say(f"{root}: ignored {len(ignored)} entries that are not class folders: {', '.join(ignored[:5])}"
            f"{', ...' if len(ignored) > 5 else ''}")
    return classes


def tree_list(root: str | Path, classes: list[str]) -> list[tuple[str, int]]:
    """`CLASS/IMAGE` paths (relative to root) and class indices, class by class."""
    root = Path(root)
    entries = []
    for index, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            entries += [(f"{name}/{p.name}", index) for p in _images(folder)]
    return entries


def read_val_labels(path: str | Path, classes: list[str]) -> dict[str, int]:
    """Image name -> label from `NAME LABEL` or `NAME WNID` lines; bare numbers are refused."""
    path = Path(path)
    if not path.is_file():
        raise CaffeTransferError(f"label file {path} does not exist")
    index = {name: i for i, name in enumerate(classes)}
    labels: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 1 and fields[0].isdigit():
            raise CaffeTransferError(
                f"{path}:{number}: a bare number: the devkit's ILSVRC2012_validation_ground_truth.txt numbers "
                "classes in its own order, not Caffe's; give --devkit DIR (the devkit folder) instead")
        if len(fields) != 2:
            raise CaffeTransferError(f"{path}:{number}: {line!r} is not `NAME LABEL` or `NAME WNID`")
        name, value = fields
        if value.isdigit():
            label = int(value)
            if label >= len(classes):
                raise CaffeTransferError(f"{path}:{number}: label {label} outside 0..{len(classes) - 1} "
                                         f"(the {len(classes)} class folders)")
        elif value in index:
            label = index[value]
        else:
            raise CaffeTransferError(f"{path}:{number}: {value!r} is neither a label nor a class folder's name")
        if name in labels:
            raise CaffeTransferError(f"{path}:{number}: {name} is labelled twice")
        labels[name] = label
    return labels


def _by_wnid(wnids: dict[str, str], classes: list[str], source: str) -> dict[str, int]:
    index = {name: i for i, name in enumerate(classes)}
    missing = sorted({w for w in wnids.values() if w not in index})
    if missing:
        raise CaffeTransferError(f"{source}: {len(missing)} of its classes have no folder among the {len(classes)} "
                                 f"train classes (the first: {missing[0]})")
    return {name: index[w] for name, w in wnids.items()}


def flat_list(root: str | Path, labels: dict[str, int], source: str) -> list[tuple[str, int]]:
    """The images of a flat folder with their labels (a name may leave out the extension, as
    Kaggle's ImageId does): each image labelled once, each name labelled there."""
    root = Path(root)
    if not root.is_dir():
        raise CaffeTransferError(f"val folder {root} does not exist")
    images = _images(root)
    names = {p.name for p in images}
    stems: dict[str, str] = {}
    for p in images:
        stems.setdefault(p.stem, p.name)
    out: dict[str, int] = {}
    for key, label in labels.items():
        name = key if key in names else stems.get(key)
        if name is None:
            raise CaffeTransferError(f"{source}: {key} is not an image in {root}")
        if name in out:
            raise CaffeTransferError(f"{source}: {name} is labelled twice (as {key} too)")
        out[name] = label
    unlabelled = [n for n in sorted(names) if n not in out]
    if unlabelled:
        raise CaffeTransferError(f"{len(unlabelled)} images of {root} have no label in {source} "
                                 f"(the first: {unlabelled[0]})")
    return sorted(out.items())


def write_whole_lists(train_dir: str | Path, val_dir: str | Path | None, out_dir: str | Path,
                      val_labels: str | Path | None = None, devkit: str | Path | None = None,
                      val_solution: str | Path | None = None,
                      say: Callable[[str], object] = lambda line: None) -> list[Path]:
    """Write `whole_train.txt` (and `whole_valid.txt`) into `out_dir`; returns their paths. `say`
    hears what of the train tree was not taken for a class."""
    classes = class_folders(train_dir, say)
    given = [(flag, value) for flag, value in (("--val-labels", val_labels), ("--devkit", devkit),
                                               ("--val-solution", val_solution)) if value is not None]
    if len(given) > 1:
        raise CaffeTransferError(f"{given[0][0]} and {given[1][0]}: give one source of val labels")
    lists = {"whole_train.txt": tree_list(train_dir, classes)}
    if val_dir is not None:
        val_dir = Path(val_dir)
        if devkit is not None:
            named = _by_wnid(devkit_val_wnids(devkit), classes, f"--devkit {devkit}")
            lists["whole_valid.txt"] = flat_list(val_dir, named, f"--devkit {devkit}")
        elif val_solution is not None:
            named = _by_wnid(solution_val_wnids(val_solution), classes, str(val_solution))
            lists["whole_valid.txt"] = flat_list(val_dir, named, str(val_solution))
        elif val_labels is not None:
            lists["whole_valid.txt"] = flat_list(val_dir, read_val_labels(val_labels, classes), str(val_labels))
        elif val_dir.is_dir() and any(p.is_dir() for p in val_dir.iterdir()):
            lists["whole_valid.txt"] = tree_list(val_dir, classes)
        else:
            raise CaffeTransferError(f"{val_dir}: no class folders; label a flat val folder with --devkit DIR, "
                                     "--val-solution FILE or --val-labels FILE")
    elif given:
        raise CaffeTransferError(f"{given[0][0]} labels val images: give --val-dir too")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, entries in lists.items():
        if not entries:
            raise CaffeTransferError(f"no images found for {name}")
        write_atomic(out_dir / name, "".join(f"{p} {label}\n" for p, label in entries))
        written.append(out_dir / name)
    return written
