"""Builds: lists to LMDBs and means, one list at a time (`build`, make-lmdb) or many lists of the
same images in one decoding pass (`build_many`).

A pass decodes each image once and writes it into every LMDB whose list holds it, relabelled as
that list says, keyed by its position in that list's own shuffle: each LMDB is the one `build`
writes for its list alone. The pass goes through the images grouped by the set of LMDBs that hold
them (so that a chunk's pixel sum belongs to the same means), in each group in the order of the
first LMDB's shuffle (so that a single build appends in key order). Each LMDB keeps its progress
in that order (see `writer`), so a killed pass, run again as it was, resumes. A pass that could
not read more than 1% of a list's images (a wrong image root, say) or any image of one of its
classes is no build: nothing is marked complete, and the next run tries every image again.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lmdb
import numpy as np

from caffe_transfer.common.caffe_env import caffe_pb2
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.common.progress import progress as progress_bar
from caffe_transfer.data.lmdb import space
from caffe_transfer.data.lmdb.datum import Slots
from caffe_transfer.data.lmdb.decode import BuildOptions, Item, keep_freed_heap
from caffe_transfer.data.lmdb.target import Target, settings
from caffe_transfer.data.lmdb.workers import AHEAD_MIN, CHUNK, Workers
from caffe_transfer.data.lmdb.writer import BATCH, first_written, write
from caffe_transfer.data.splits import listed_classes, read_list


@dataclass
class BuildResult:
    lmdb: Path
    mean: Path | None
    written: int
    skipped: int
    seconds: float
    already_complete: bool = False
    warned: int = 0


@dataclass(frozen=True)
class Dataset:
    """A list file and the OUT_DIR its LMDB and mean go to."""

    list_file: Path
    out_dir: Path


def order(count: int, shuffle: bool, seed: int) -> np.ndarray:
    """The list positions in database order (a fixed-seed permutation, or the list order)."""
    return np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)


class Union:
    """The images of several lists of one image root, in the pass's order, and for each the
    LMDBs that hold it with its key number and label in each."""

    def __init__(self, targets: list[Target], options: BuildOptions):
        index: dict[tuple[str, int], int] = {}  # (path, its n-th occurrence in a list) -> union index
        paths, columns = [], []
        for target in targets:
            seen: dict[str, int] = {}
            column = []
            for path, _ in target.entries:
                seen[path] = seen.get(path, -1) + 1
                u = index.setdefault((path, seen[path]), len(index))
                if u == len(paths):
                    paths.append(path)
                column.append(u)
            columns.append(np.array(column, dtype=np.int64))
        count = len(paths)
        numbers = np.full((len(targets), count), -1, dtype=np.int64)
        labels = np.zeros((len(targets), count), dtype=np.int64)
        for t, (target, column) in enumerate(zip(targets, columns)):
            in_db = np.empty(len(column), dtype=np.int64)
            in_db[order(len(column), options.shuffle, options.seed)] = np.arange(len(column))
            numbers[t, column] = in_db
            labels[t, column] = [label for _, label in target.entries]
        member = numbers >= 0
        _, group = np.unique(member.T, axis=0, return_inverse=True)
        group = group.reshape(-1)
        first = member.argmax(axis=0)
        sequence = np.lexsort((numbers[first, np.arange(count)], group))
        self.paths = [paths[u] for u in sequence.tolist()]
        self.numbers, self.labels = numbers[:, sequence], labels[:, sequence]
        self.member, self.group, self.first = member[:, sequence], group[sequence], first[sequence]

    def __len__(self) -> int:
        return len(self.paths)

    def members(self, position: int) -> list[tuple[int, int, int]]:
        """(target, key number, label) of each LMDB that holds the image at `position`."""
        return [(int(t), int(self.numbers[t, position]), int(self.labels[t, position]))
                for t in np.flatnonzero(self.member[:, position])]

    def chunks(self, start: int, cuts: set[int]) -> list[list[Item]]:
        """Chunks of CHUNK images from `start` on, each within one group of LMDBs and none across a
        cut (an LMDB's progress: a chunk's sum must be folded in whole or not at all)."""
        chunks: list[list[Item]] = []
        for p in range(start, len(self.paths)):
            if not chunks or len(chunks[-1]) == CHUNK or p in cuts or self.group[p] != self.group[p - 1]:
                chunks.append([])
            chunks[-1].append(Item(p, self.paths[p], int(self.labels[self.first[p], p])))
        return chunks


def _slots(options: BuildOptions, count: int) -> Slots | None:
    shape = options.raw_shape
    return Slots(count, shape, CHUNK) if shape else None  # sizes vary: pickled bytes instead


def build(list_file: str | Path, image_root: str | Path, out_dir: str | Path,
          options: BuildOptions = BuildOptions(), force: bool = False, progress: bool = True) -> BuildResult:
    """Build OUT_DIR/lmdb and OUT_DIR/mean.binaryproto from a list; resumes an interrupted build."""
    return build_many([(Path(image_root), [Dataset(Path(list_file), Path(out_dir))])], options, force,
                      progress)[0]


Plan = Callable[[list[tuple[Path, list[Target]]]], None]


def build_many(groups: list[tuple[Path, list[Dataset]]], options: BuildOptions = BuildOptions(),
               force: bool = False, progress: bool = True, plan: Plan | None = None) -> list[BuildResult]:
    """Build the LMDB and mean of every dataset, one decoding pass per image root, one progress
    bar for all; `plan` sees the builds to do before any starts (to check the disk, say)."""
    if options.resize < 0:
        raise CaffeTransferError(f"--resize {options.resize}: expected a size in pixels, or 0 to keep sizes")
    for root, _ in groups:
        if not Path(root).is_dir():
            raise CaffeTransferError(f"image root {root} does not exist")
    passes = [(Path(root), [_target(d, options, Path(root)) for d in datasets]) for root, datasets in groups]
    everyone = [t for _, targets in passes for t in targets]
    dirs = [t.out_dir.resolve() for t in everyone]
    if len(set(dirs)) < len(dirs):
        raise CaffeTransferError(f"two datasets go to {next(d for d in dirs if dirs.count(d) > 1)}: one OUT_DIR each")
    results: dict[int, BuildResult] = {}
    for target in everyone:
        target.finished(force)  # refuse what is not make-lmdb's before writing a lock into it
    try:
        for target in everyone:
            target.lock()
            record = target.finished(force)
            if record:
                results[id(target)] = BuildResult(target.final, target.mean if target.mean.is_file() else None,
                                                  record["written"], record["skipped"], 0.0, True,
                                                  record.get("warned", 0))
        todo = [(root, [t for t in targets if id(t) not in results]) for root, targets in passes]
        todo = [(root, targets) for root, targets in todo if targets]
        if plan:
            plan(todo)
        _run(todo, options, force, progress, results)
    except (OSError, lmdb.Error) as e:
        full = [t.out_dir for t in everyone if _full(t.out_dir)]
        if full or getattr(e, "errno", None) == errno.ENOSPC:
            raise CaffeTransferError(f"no space left on the disk of {(full or [t.out_dir for t in everyone])[0]}: free some and run the "
                                     "same command again, it goes on where it stopped") from None
        if isinstance(e, lmdb.Error):
            raise CaffeTransferError(f"writing the LMDBs failed ({e}); what was committed is kept, run the same "
                                     "command again to go on") from None
        raise
    finally:
        for target in everyone:
            target.close()
            target.unlock()
    return [results[id(t)] for t in everyone]


FULL_BELOW = 64 << 20  # free bytes under which a failed write is taken for a full disk (LMDB says EIO)


def _full(folder: Path) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < FULL_BELOW


def _target(dataset: Dataset, options: BuildOptions, root: Path) -> Target:
    entries = read_list(dataset.list_file, listed_classes(dataset.list_file))
    return Target(dataset.list_file, Path(dataset.out_dir), entries,
                  settings(dataset.list_file, entries, options, root))


SKIPPED_SHARE, SKIPPED_ALWAYS = 0.01, 10  # unreadable images a complete build may have: 1%, or 10 of a small list


def shortfall(target: Target) -> str | None:
    """Why a pass over all of its list is no complete build of it (said on one line), or None:
    more images skipped than SKIPPED_SHARE of the list (and than SKIPPED_ALWAYS), as with a wrong
    image root, or a class with images listed and none written, which would train without it."""
    state, listed = target.state, len(target.entries)
    if not state.count:
        first = state.skipped[0]
        return f"none of the {listed} images of {target.list_file} could be read (the first: {first[0]}: {first[1]})"
    if len(state.skipped) > max(SKIPPED_SHARE * listed, SKIPPED_ALWAYS):
        return (f"{len(state.skipped)} of the {listed} images of {target.list_file} could not be read, more than "
                f"{SKIPPED_SHARE:.0%}")
    skipped = {path for path, _ in state.skipped}
    emptied = sorted({label for _, label in target.entries} - {label for path, label in target.entries
                                                                if path not in skipped})
    if emptied:
        return f"class {emptied[0]} of {target.list_file} lost every one of its images ({len(emptied)} such classes)"
    return None


def _run(todo: list[tuple[Path, list[Target]]], options: BuildOptions, force: bool, progress: bool,
         results: dict[int, BuildResult]) -> None:
    """The passes, one bar for all; each target finished once its pass is done."""
    for _, targets in todo:
        for target in targets:
            target.open(force)
            target.reserve(space.reservation(target, options))
    unions = [Union(targets, options) for _, targets in todo]
    bar = None
    if progress and todo:
        names = [t.out_dir.name for _, targets in todo for t in targets]
        bar = progress_bar(sum(len(u) for u in unions), names[0] if len(names) == 1 else f"{len(names)} datasets",
                           unit="img")
    try:
        short = []
        for (root, targets), union in zip(todo, unions):
            start = time.perf_counter()
            begun = min(t.state.next for t in targets)
            if bar:
                bar.update(begun)
            _fill(root, targets, union, begun, options, bar)
            for target in targets:
                why = shortfall(target)
                if why:
                    short.append((target, why))
                    target.discard()
                    continue
                has_mean = target.finish()
                state = target.state
                results[id(target)] = BuildResult(target.final, target.mean if has_mean else None, state.count,
                                                  len(state.skipped), time.perf_counter() - start,
                                                  warned=len(state.warned))
    finally:
        if bar:
            bar.close()
    if short:
        target, why = short[0]
        raise CaffeTransferError(
            why + (f" (and {len(short) - 1} more lists fell short)" if len(short) > 1 else "")
            + f"; nothing was marked complete (see {target.out_dir / 'skipped.txt'}): check the image root, "
            "then run again: every image is tried again")


def _fill(root: Path, targets: list[Target], union: Union, start: int, options: BuildOptions, bar) -> None:
    """Convert the images of one pass from `start` on, on all cores, into its LMDBs."""
    chunks = union.chunks(start, {t.state.next for t in targets})
    workers = max(1, min(options.workers or os.cpu_count() or 1, len(chunks)))
    ahead = max(AHEAD_MIN, BATCH // CHUNK // workers + 2)  # a batch's worth in flight, for the commit
    caffe_pb2()  # imported once here, inherited by the forked workers
    keep_freed_heap()  # the writer's
    slots = _slots(options, workers * ahead)
    control = next((item for item in (first_written(t.env) for t in targets) if item), None)
    with Workers(chunks, workers, ahead, root, options, slots, control) as pool:
        write(targets, union.members, pool.results(), slots, bar)
