"""Whole lists from an image tree: `whole_train.txt` and `whole_valid.txt`.

A tree laid out as `CLASS/IMAGE` (ImageNet's train folder, or any dataset) gives one `PATH LABEL`
line per image, with class indices in the sorted order of the class folder names (for ImageNet
that is the order of the wnids, i.e. the ILSVRC2012 class index). Validation images come either
in the same layout, or flat in one folder with a label file (`NAME LABEL` or `NAME WNID` per line,
or one label per line in sorted file order, as the ILSVRC2012 devkit gives them).
"""

from __future__ import annotations

from pathlib import Path

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.errors import CaffeTransferError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def class_folders(root: str | Path) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise CaffeTransferError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise CaffeTransferError(f"{root} has no class folders: expected {root}/CLASS/IMAGE")
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


def flat_list(root: str | Path, labels_file: str | Path, classes: list[str]) -> list[tuple[str, int]]:
    """Images of a flat folder labelled by `labels_file`."""
    root, labels_file = Path(root), Path(labels_file)
    if not labels_file.is_file():
        raise CaffeTransferError(f"label file {labels_file} does not exist")
    index = {name: i for i, name in enumerate(classes)}
    rows = [line.split() for line in labels_file.read_text().splitlines() if line.strip()]

    def label(value: str) -> int:
        if value.isdigit():
            return int(value)
        if value in index:
            return index[value]
        raise CaffeTransferError(f"{labels_file}: label {value!r} is neither an index nor a class name")

    if all(len(r) == 1 for r in rows):  # the devkit's one label per image, in sorted file order
        images = _images(root)
        if len(images) != len(rows):
            raise CaffeTransferError(f"{labels_file} has {len(rows)} labels for {len(images)} images in {root}")
        return [(p.name, label(r[0])) for p, r in zip(images, rows)]
    return [(r[0], label(r[-1])) for r in rows]


def write_whole_lists(train_dir: str | Path, val_dir: str | Path | None, out_dir: str | Path,
                      val_labels: str | Path | None = None) -> list[Path]:
    """Write `whole_train.txt` (and `whole_valid.txt`) into `out_dir`; returns their paths."""
    classes = class_folders(train_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lists = {"whole_train.txt": tree_list(train_dir, classes)}
    if val_dir is not None:
        val_dir = Path(val_dir)
        if val_labels is not None:
            lists["whole_valid.txt"] = flat_list(val_dir, val_labels, classes)
        elif val_dir.is_dir() and any(p.is_dir() for p in val_dir.iterdir()):
            lists["whole_valid.txt"] = tree_list(val_dir, classes)
        else:
            raise CaffeTransferError(f"{val_dir}: no class folders; give --val-labels for a flat val folder")
    written = []
    for name, entries in lists.items():
        if not entries:
            raise CaffeTransferError(f"no images found for {name}")
        write_atomic(out_dir / name, "".join(f"{p} {label}\n" for p, label in entries))
        written.append(out_dir / name)
    return written
