"""The paper's class splits: which classes form each half, by the authors' exact rules.

Random halves: `numpy.random.seed([s])` (a one-element list; the plain int gives other
splits), then A = the sorted `numpy.random.choice(arange(K), K // 2, replace=False)`, B = the rest.
Natural/man-made: the index sets shipped in `splits/`; following the authors' folders, half A is
natural (`halfnatmanA`) and half B man-made (`halfnatmanB`), although the paper's text calls
man-made "A".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.common.resources import resource_dir

SPLIT_IDS = ("0", "1", "2", "3", "natman")
HALVES = ("A", "B")
IMAGENET_CLASSES = 1000
# Images per class of the reduced-data experiment (the paper's Figure 3, bottom right).
REDUCED_PER_CLASS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 750, 1000, 1300)


def random_halves(seed: int, num_classes: int = IMAGENET_CLASSES) -> tuple[list[int], list[int]]:
    """Halves A and B of `num_classes` classes for seed `seed`, by the authors' seeding rule."""
    np.random.seed([seed])
    a = sorted(int(i) for i in np.random.choice(np.arange(num_classes), num_classes // 2, replace=False))
    chosen = set(a)
    return a, [i for i in range(num_classes) if i not in chosen]


def _read_indices(name: str) -> list[int]:
    text = (resource_dir("splits") / name).read_text()
    return [int(line) for line in text.split("\n") if line.strip() and not line.startswith("#")]


def natman_halves() -> tuple[list[int], list[int]]:
    """(natural, man-made) ILSVRC2012 class indices: the authors' halfnatmanA and halfnatmanB."""
    return _read_indices("natman_natural.txt"), _read_indices("natman_manmade.txt")


def half_classes(split: str, half: str) -> list[int]:
    """The ILSVRC2012 classes of half `half` ('A' or 'B') of split `split` ('0'..'3' or 'natman')."""
    if half not in HALVES:
        raise CaffeTransferError(f"half {half!r}: expected A or B")
    if split == "natman":
        halves = natman_halves()
    elif split in SPLIT_IDS:
        halves = random_halves(int(split))
    else:
        raise CaffeTransferError(f"split {split!r}: expected one of {', '.join(SPLIT_IDS)}")
    return halves[HALVES.index(half)]


# --- list files ------------------------------------------------------------------------------
# The authors' list layout: DIR/<dataset>/files.txt (`PATH NEWLABEL` per line, in the order of the
# whole list, labels renumbered 0..K-1 by ascending original class) and DIR/<dataset>/idxmap.txt.
SUBSETS = ("train", "valid")
IDXMAP = "idxmap.txt"
IDXMAP_HEADER = "# Orig_idx new_idx\n"
# A path in an ImageNet synset folder (n01440764/n01440764_10026.JPEG): a list of ImageNet.
SYNSET_PATH = re.compile(r"(?:^|/)n[0-9]{8}/[^/]+$")


def read_list(path: str | Path, num_classes: int | None = None) -> list[tuple[str, int]]:
    """A list file: one `PATH LABEL` per line (the path may contain spaces), every label a class
    index 0..K-1 (K = `num_classes` where known): the one check of labels, since Caffe's loss
    layers abort, hours into training, on a label outside the net's classes."""
    path = Path(path)
    if not path.is_file():
        raise CaffeTransferError(f"list file {path} does not exist")
    classes = f"0..{num_classes - 1} (of its {num_classes} classes)" if num_classes else "0 or more"
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        name, _, label = line.rstrip().rpartition(" ")
        if not name or not label.lstrip("-").isdigit():
            raise CaffeTransferError(f"{path}:{number}: {line!r} is not `PATH LABEL`")
        if int(label) < 0 or (num_classes and int(label) >= num_classes):
            raise CaffeTransferError(f"{path}:{number}: label {label}: expected a class index {classes}")
        entries.append((name, int(label)))
    if not entries:
        raise CaffeTransferError(f"list file {path} is empty: expected `PATH LABEL` lines")
    return entries


def listed_classes(list_file: str | Path) -> int | None:
    """K of a list in the authors' layout: the rows of the idxmap.txt beside it; None without one."""
    idxmap = Path(list_file).parent / IDXMAP
    if not idxmap.is_file():
        return None
    return sum(1 for line in idxmap.read_text().splitlines() if line.strip() and not line.startswith("#"))


def subset_lists(entries: list[tuple[str, int]], classes: list[int]) -> tuple[str, str]:
    """files.txt and idxmap.txt texts for the images of `classes`, relabelled 0..K-1."""
    new = {old: i for i, old in enumerate(sorted(classes))}
    files = "".join(f"{name} {new[label]}\n" for name, label in entries if label in new)
    idxmap = IDXMAP_HEADER + "".join(f"{old} {i}\n" for old, i in new.items())
    return files, idxmap


def reduced_list(entries: list[tuple[str, int]], per_class: int) -> str:
    """The first `per_class` images of each class, in list order, labels unchanged."""
    seen: dict[int, int] = {}
    lines = []
    for name, label in entries:
        seen[label] = seen.get(label, 0) + 1
        if seen[label] <= per_class:
            lines.append(f"{name} {label}\n")
    return "".join(lines)


def split_datasets(split: str, classes_a: list[int], classes_b: list[int]) -> dict[str, list[int]]:
    word = "natman" if split == "natman" else split
    return {f"half{word}A": classes_a, f"half{word}B": classes_b}


@dataclass
class Splits:
    """What `write_splits` wrote: the list folders, the whole list's class count, and what the
    user should be told (a count inferred, halves left out)."""

    folders: list[Path]
    num_classes: int
    notes: list[str]


def class_count(whole_list: str | Path, entries: list[tuple[str, int]], num_classes: int | None) -> tuple[int, str]:
    """The classes of a whole list, checked: each path once, labels 0..K-1 each with images, K
    equal to `num_classes` where given, else ImageNet's 1000 for a list of ImageNet's synset
    folders; and a note when K was inferred."""
    first: dict[str, int] = {}
    for name, label in entries:
        if name in first:
            raise CaffeTransferError(f"{whole_list}: {name} is listed twice (labels {first[name]} and {label}): "
                                     "each image once")
        first[name] = label
    labels = sorted(set(first.values()))
    k = labels[-1] + 1 if num_classes is None else num_classes
    if num_classes is None and k != IMAGENET_CLASSES and all(SYNSET_PATH.search(name) for name in first):
        raise CaffeTransferError(
            f"{whole_list}: its paths are ImageNet's (in nXXXXXXXX/ synset folders) but its labels give {k} classes, "
            f"not ImageNet's {IMAGENET_CLASSES}, on which the paper's splits are defined: a class folder is missing "
            f"from the tree, or give --num-classes {k} if {k} is meant")
    if num_classes is not None and (labels[-1] >= k or len(labels) != k):
        raise CaffeTransferError(f"{whole_list} has {len(labels)} classes (labels {labels[0]}..{labels[-1]}), not "
                                 f"--num-classes {k}: give --num-classes {len(labels)}, or leave it out to infer it")
    missing = sorted(set(range(k)) - set(labels))
    if missing:
        raise CaffeTransferError(f"{whole_list}: {len(missing)} of the classes 0..{k - 1} have no image (the first: "
                                 f"{missing[0]}): every class of a whole list needs images")
    return k, "" if num_classes is not None else f"{k} classes (inferred from the labels 0..{k - 1})"


def write_splits(whole_list: str | Path, subset: str, out_dir: str | Path,
                 custom: dict[str, list[int]] | None = None, num_classes: int | None = None,
                 reduced: tuple[int, ...] | None = None) -> Splits:
    """Write the authors' list folders for one subset of a whole list.

    Default: the 4 random halves, the natural/man-made halves (for ImageNet's 1000 classes only),
    and for train the reduced sets. `custom` maps dataset names to class-index sets instead (e.g.
    the demo's halves). `num_classes` None: inferred from the labels, and said so."""
    from caffe_transfer.common.atomic import write_atomic

    if subset not in SUBSETS:
        raise CaffeTransferError(f"subset {subset!r}: expected one of {', '.join(SUBSETS)}")
    entries = read_list(whole_list)
    num_classes, note = class_count(whole_list, entries, num_classes)
    notes = [note] if note else []
    if custom is None:
        custom = {}
        for s in SPLIT_IDS:
            if s == "natman" and num_classes != IMAGENET_CLASSES:
                notes.append(f"natural/man-made halves left out: they split ImageNet's {IMAGENET_CLASSES} classes, "
                             f"this list has {num_classes}")
                continue
            halves = natman_halves() if s == "natman" else random_halves(int(s), num_classes)
            custom.update(split_datasets(s, *halves))
    for name, classes in custom.items():
        outside = [c for c in classes if not 0 <= c < num_classes]
        if outside:
            raise CaffeTransferError(f"{name}: class {outside[0]} outside the list's 0..{num_classes - 1}")
    out_dir = Path(out_dir)
    written = []
    plan = {f"{name}_{subset}": subset_lists(entries, classes) for name, classes in custom.items()}
    if subset == "train" and reduced is None:
        reduced = REDUCED_PER_CLASS
    identity = IDXMAP_HEADER + "".join(f"{i} {i}\n" for i in range(num_classes))
    for k in (reduced or ()) if subset == "train" else ():
        plan[f"reduced{k:04d}_train"] = (reduced_list(entries, k), identity)
    try:
        for name, (files, idxmap) in plan.items():
            folder = out_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / "files.txt", files)
            write_atomic(folder / IDXMAP, idxmap)
            written.append(folder)
    except OSError as e:
        raise CaffeTransferError(f"cannot write lists under {out_dir}: {e.strerror or e}") from None
    return Splits(written, num_classes, notes)


def read_class_set(path: str | Path, wnids: list[str] | None = None) -> list[int]:
    """Class indices from a file of indices or of wnids (one per line, # comments)."""
    items = [line.split()[0] for line in Path(path).read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    if all(i.isdigit() for i in items):
        return sorted(int(i) for i in items)
    order = wnids if wnids is not None else imagenet_wnids()
    index = {w: i for i, w in enumerate(order)}
    unknown = [i for i in items if i not in index]
    if unknown:
        raise CaffeTransferError(f"{path}: {unknown[0]!r} is neither a class index nor a known wnid")
    return sorted(index[i] for i in items)


def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC2012 wnids in class-index order (sorted), shipped in splits/."""
    return [line.split()[0] for line in (resource_dir("splits") / "ilsvrc12_wnids.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def check_lists(directory: str | Path) -> list[str]:
    """Problems in a folder of list folders: overlapping or incomplete halves, labels outside
    0..K-1, idxmaps that disagree with the labels, classes without images, paths listed twice or
    with conflicting labels. An empty result means all is well."""
    directory = Path(directory)
    problems = []
    folders = sorted(p for p in directory.iterdir() if (p / "files.txt").is_file()) if directory.is_dir() else []
    if not folders:
        return [f"{directory}: no list folders (expected DIR/<dataset>/files.txt)"]
    classes: dict[str, set[int]] = {}
    original: dict[str, tuple[int, str]] = {}  # path -> (its ILSVRC2012 class, the first folder saying so)
    for folder in folders:
        entries = read_list(folder / "files.txt")
        labels = {label for _, label in entries}
        idxmap = folder / IDXMAP
        if not idxmap.is_file():
            problems.append(f"{folder.name}: no {IDXMAP}")
            continue
        pairs = [tuple(map(int, line.split())) for line in idxmap.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        k = len(pairs)
        if sorted(new for _, new in pairs) != list(range(k)):
            problems.append(f"{folder.name}: idxmap's new labels are not 0..{k - 1}")
        if not labels <= set(range(k)):
            problems.append(f"{folder.name}: labels {sorted(labels - set(range(k)))[:5]} outside 0..{k - 1}")
        empty = sorted(old for old, new in pairs if new not in labels)
        if empty:
            problems.append(f"{folder.name}: {len(empty)} classes of its idxmap have no image (the first: {empty[0]})")
        classes[folder.name] = {old for old, _ in pairs}
        old_of = {new: old for old, new in pairs}
        seen: set[str] = set()
        for name, label in entries:
            if name in seen:
                problems.append(f"{folder.name}: {name} is listed twice")
            seen.add(name)
            was = original.setdefault(name, (old_of.get(label, -1), folder.name))
            if was[0] != old_of.get(label, -1):
                problems.append(f"{name} is class {was[0]} in {was[1]} but class {old_of.get(label)} in {folder.name}")
    for name, own in classes.items():
        if "A_" not in name or not name.startswith("half"):
            continue
        other = name.replace("A_", "B_", 1)
        if other in classes:
            if own & classes[other]:
                problems.append(f"{name} and {other} share classes {sorted(own & classes[other])[:5]}")
            union = own | classes[other]
            if union != set(range(len(union))):
                problems.append(f"{name} and {other} do not cover 0..{len(union) - 1}")
    return problems
