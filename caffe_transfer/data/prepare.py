"""ImageNet as it comes to the LMDBs a set of experiments trains on, decoding each image once.

From the train tree and the val folder (labelled as `lists` labels it): the whole lists, every
split's lists, and the LMDB and mean of each dataset the chosen nets name (a net's train_set and
val_set), in DATA_ROOT/<dataset>/ where `gen` and `plan` look. One decoding pass per image root
writes every dataset that holds an image; before it starts, the space each dataset needs is said,
and a disk that cannot hold it is refused. Run again, it goes on where it stopped.

Every output is checked before the first is written: an LMDB make-lmdb did not write, or a list
file in DATA_ROOT that differs from the one prepare writes (the user's own, or one of another
image tree, from which LMDBs may have been built), is refused and nothing is changed.
"""

from __future__ import annotations

import filecmp
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.lists import write_whole_lists
from caffe_transfer.data.lmdb import (
    BuildOptions,
    BuildResult,
    Dataset,
    build_many,
    refuse_foreign,
    space,
)
from caffe_transfer.data.splits import write_splits

SUBSET_ROOTS = {"train": 0, "valid": 1}  # a dataset name's suffix -> which image root it is read from


@dataclass
class Prepared:
    lists: list[Path]
    notes: list[str]
    results: dict[str, BuildResult]


def prepare(train_dir: str | Path, val_dir: str | Path, data_root: str | Path, datasets: list[str],
            options: BuildOptions = BuildOptions(), val_labels: str | Path | None = None,
            devkit: str | Path | None = None, val_solution: str | Path | None = None, force: bool = False,
            progress: bool = True, say: Callable[[str], None] = lambda line: None,
            num_classes: int | None = None) -> Prepared:
    """Lists, splits and the LMDBs of `datasets` (names as `half0A_train`, `whole_valid`); a
    tree of other than ImageNet's 1000 classes needs `num_classes` (see splits.class_count)."""
    data_root = Path(data_root)
    bad = [d for d in datasets if d.rpartition("_")[2] not in SUBSET_ROOTS]
    if bad:
        raise CaffeTransferError(f"dataset {bad[0]!r}: expected a name ending in _train or _valid")
    for name in datasets:  # every output checked before the first list is written
        refuse_foreign(data_root / name)
    lists, notes = _write_lists(train_dir, val_dir, data_root, val_labels, devkit, val_solution, num_classes, say)
    missing = [d for d in datasets if not (data_root / d / "files.txt").is_file()]
    if missing:
        raise CaffeTransferError(f"no list for dataset {missing[0]} under {data_root}"
                                 + (f" ({'; '.join(notes)})" if notes else ": not one of the paper's datasets"))
    roots = (Path(train_dir), Path(val_dir))
    groups: dict[int, list[Dataset]] = {}
    for name in datasets:
        groups.setdefault(SUBSET_ROOTS[name.rpartition("_")[2]], []).append(
            Dataset(data_root / name / "files.txt", data_root / name))

    def plan(todo) -> None:
        needs = space.estimate(todo, options)
        for line in space.describe(needs, options):
            say(line)
        space.check(needs, options)

    results = build_many([(roots[r], group) for r, group in sorted(groups.items())], options, force, progress, plan)
    built = [d.out_dir.name for _, group in sorted(groups.items()) for d in group]
    return Prepared(lists, notes, dict(zip(built, results)))


def _write_lists(train_dir, val_dir, data_root: Path, val_labels, devkit, val_solution, num_classes: int | None,
                 say: Callable[[str], None]) -> tuple[list[Path], list[str]]:
    """The whole lists and every split's, written beside DATA_ROOT's (in a folder of its own there,
    on the same disk), then moved into place; the whole lists' paths and the notes on them."""
    created = not data_root.exists()
    data_root.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    try:
        with tempfile.TemporaryDirectory(dir=data_root, prefix=".prepare-lists.") as staging:
            staged = write_whole_lists(train_dir, val_dir, Path(staging) / "lists", val_labels, devkit,
                                       val_solution, say)
            for subset, whole in zip(SUBSET_ROOTS, staged):
                result = write_splits(whole, subset, staging, num_classes=num_classes)
                notes += [f"{whole.name}: {note}" for note in result.notes]
                write_splits(whole, subset, staging, custom={"whole": list(range(result.num_classes))},
                             num_classes=result.num_classes, reduced=())
            _place(Path(staging), data_root)
    except CaffeTransferError as e:  # it names a list where it was written first: say where it goes
        if created:
            data_root.rmdir()  # as it was: no folder
        raise CaffeTransferError(str(e).replace(staging, str(data_root))) from None
    except BaseException:
        if created:
            data_root.rmdir()
        raise
    return [data_root / "lists" / whole.name for whole in staged], notes


def _place(staged: Path, data_root: Path) -> None:
    """Move the lists written under `staged` to the same places in DATA_ROOT; none is moved if a
    file there differs (it is refused, by name)."""
    files = sorted(p for p in staged.rglob("*") if p.is_file())
    for path in files:
        there = data_root / path.relative_to(staged)
        if there.exists() and not (there.is_file() and filecmp.cmp(path, there, shallow=False)):
            raise CaffeTransferError(f"{there} is not the list prepare writes for these images (your own, or one of "
                                     "another image tree): move it away, with what was built from it, and run again")
    for path in files:
        there = data_root / path.relative_to(staged)
        there.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, there)
