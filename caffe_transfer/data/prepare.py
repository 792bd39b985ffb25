"""ImageNet as it comes to the LMDBs a set of experiments trains on, decoding each image once.

From the train tree and the val folder (labelled as `lists` labels it): the whole lists, every
split's lists, and the LMDB and mean of each dataset the chosen nets name (a net's train_set and
val_set), in DATA_ROOT/<dataset>/ where `gen` and `plan` look. One decoding pass per image root
writes every dataset that holds an image; before it starts, the space each dataset needs is said,
and a disk that cannot hold it is refused. Run again, it goes on where it stopped.
"""

from __future__ import annotations

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
    lists = write_whole_lists(train_dir, val_dir, data_root / "lists", val_labels, devkit, val_solution, say)
    notes: list[str] = []
    for subset, whole in zip(SUBSET_ROOTS, lists):
        result = write_splits(whole, subset, data_root, num_classes=num_classes)
        notes += [f"{whole.name}: {note}" for note in result.notes]
        write_splits(whole, subset, data_root, custom={"whole": list(range(result.num_classes))},
                     num_classes=result.num_classes, reduced=())
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
