"""One build: a list file to OUT_DIR/lmdb and OUT_DIR/mean.binaryproto, resumable.

The LMDB is built as `lmdb.partial` next to its settings; finished, the progress sub-database is
dropped (Caffe reads the main database only), the LMDB is renamed to `lmdb`, and `COMPLETE` is
written; a complete LMDB is never rebuilt unless forced. Unreadable images are skipped, counted
and listed in `skipped.txt`; images written although a decoder warned about them (libjpeg's
"Corrupt JPEG data", which convert_imageset prints without naming the file) are listed in
`warnings.txt`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.caffe_env import caffe_pb2
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.lmdb.datum import Slots, write_mean
from caffe_transfer.data.lmdb.decode import BuildOptions, Item, keep_freed_heap
from caffe_transfer.data.lmdb.workers import AHEAD_MIN, CHUNK, Workers
from caffe_transfer.data.lmdb.writer import BATCH, Flusher, State, first_written, write
from caffe_transfer.data.splits import read_list

INITIAL_MAP_SIZE = 1 << 30  # grown, by doubling, between transactions


@dataclass
class BuildResult:
    lmdb: Path
    mean: Path | None
    written: int
    skipped: int
    seconds: float
    already_complete: bool = False
    warned: int = 0


def order(count: int, shuffle: bool, seed: int) -> np.ndarray:
    """The list positions in database order (a fixed-seed permutation, or the list order)."""
    return np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)


def _slots(options: BuildOptions, count: int) -> Slots | None:
    if options.encoded or not options.resize:
        return None  # sizes vary: pickled bytes instead
    channels = 1 if options.gray else 3
    return Slots(count, (channels, options.resize, options.resize), CHUNK)


def build(list_file: str | Path, image_root: str | Path, out_dir: str | Path,
          options: BuildOptions = BuildOptions(), force: bool = False, progress: bool = True) -> BuildResult:
    """Build OUT_DIR/lmdb and OUT_DIR/mean.binaryproto from a list; resumes an interrupted build."""
    image_root, out_dir = Path(image_root), Path(out_dir)
    if not image_root.is_dir():
        raise CaffeTransferError(f"image root {image_root} does not exist")
    if options.resize < 0:
        raise CaffeTransferError(f"--resize {options.resize}: expected a size in pixels, or 0 to keep sizes")
    entries = read_list(list_file)
    final, partial = out_dir / "lmdb", out_dir / "lmdb.partial"
    complete = out_dir / "COMPLETE"
    start = time.perf_counter()
    if complete.is_file() and final.is_dir() and not force:
        meta = json.loads(complete.read_text())
        mean = out_dir / "mean.binaryproto"
        return BuildResult(final, mean if mean.is_file() else None, meta["written"], meta["skipped"], 0.0, True,
                           meta.get("warned", 0))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CaffeTransferError(f"cannot write {out_dir}: {e.strerror or e}") from None
    if force and partial.exists():
        shutil.rmtree(partial)
    settings = {"list": str(Path(list_file).resolve()), "entries": len(entries), "resize": options.resize,
                "shuffle": options.shuffle, "seed": options.seed, "encoded": options.encoded, "gray": options.gray}
    settings_file = partial / "caffe-transfer-settings.json"
    if partial.exists() and (not settings_file.is_file() or json.loads(settings_file.read_text()) != settings):
        shutil.rmtree(partial)  # a half-built LMDB of other settings cannot be continued
    partial.mkdir(exist_ok=True)
    write_atomic(settings_file, json.dumps(settings, indent=1))
    # No fsync per commit: a killed process loses nothing the OS already has; synced at the end.
    # No writemap: mapped pages could not be dropped from the page cache (see Flusher).
    env = lmdb.open(str(partial), map_size=INITIAL_MAP_SIZE, max_dbs=2, sync=False, metasync=False)
    try:
        state = State(env)
        _fill(env, state, entries, image_root, options, partial / "data.mdb", out_dir.name if progress else None)
        mean_path = out_dir / "mean.binaryproto"
        has_mean = bool(state.count) and state.sum is not None
        if has_mean:
            write_mean(mean_path, state.sum, state.count)
        else:
            mean_path.unlink(missing_ok=True)
        with env.begin(write=True) as txn:
            txn.drop(state.db, delete=True)
        env.sync(True)
    finally:
        env.close()
    settings_file.unlink()
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    for name, listing in (("skipped.txt", state.skipped), ("warnings.txt", state.warned)):
        write_atomic(out_dir / name, "".join(f"{path}\t{text}\n" for path, text in listing))
    write_atomic(complete, json.dumps({**settings, "written": state.count, "skipped": len(state.skipped),
                                       "warned": len(state.warned), "mean": has_mean}, indent=1) + "\n")
    return BuildResult(final, mean_path if has_mean else None, state.count, len(state.skipped),
                       time.perf_counter() - start, warned=len(state.warned))


def _fill(env: lmdb.Environment, state: State, entries: list, image_root: Path, options: BuildOptions,
          data_file: Path, progress: str | None) -> None:
    """Convert and write the images from `state.next` on, on all cores, with a progress bar."""
    positions = order(len(entries), options.shuffle, options.seed)
    todo = [Item(i, *entries[p]) for i, p in enumerate(positions.tolist()) if i >= state.next]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), initial=state.next, unit="img", desc=progress, smoothing=0.05)
    chunks = [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]
    workers = max(1, min(options.workers or os.cpu_count() or 1, len(chunks)))
    ahead = max(AHEAD_MIN, BATCH // CHUNK // workers + 2)  # a batch's worth in flight, for the commit
    caffe_pb2()  # imported once here, inherited by the forked workers
    keep_freed_heap()  # the writer's
    slots = _slots(options, workers * ahead)
    flusher = Flusher(data_file)
    try:
        with Workers(chunks, workers, ahead, image_root, options, slots, first_written(env)) as pool:
            write(env, state, pool.results(), slots, bar, flusher)
    finally:
        flusher.close()
        if bar:
            bar.close()
