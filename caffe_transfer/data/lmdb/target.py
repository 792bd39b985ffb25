"""One OUT_DIR being built: its lock, what it holds already, and how it is finished.

An OUT_DIR belongs to make-lmdb when its LMDB carries the settings file make-lmdb writes into it
(`caffe-transfer-settings.json`, beside `data.mdb`: Caffe reads only the database). Anything
else there (an LMDB from `convert_imageset`, say) is never deleted, even with --force. A finished
LMDB built with other settings (another list, --resize, --gray, --encoded, --seed) is an error
that names the difference, unless --force rebuilds it; so is a half-built one. One build at a
time holds OUT_DIR's lock (`make-lmdb.lock`, an flock the kernel drops when the process dies).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.lmdb.datum import write_mean
from caffe_transfer.data.lmdb.decode import BuildOptions
from caffe_transfer.data.lmdb.writer import Flusher, State

SETTINGS = "caffe-transfer-settings.json"
LOCK = "make-lmdb.lock"
INITIAL_MAP_SIZE = 1 << 30  # grown, by doubling, between transactions
_HELD: set[int] = set()  # this process's lock fds
_KEEP_SIZE = 1  # FALLOC_FL_KEEP_SIZE: blocks past the end, the file's size unchanged


def _close_held_locks() -> None:
    """In a forked child (a decoder), close its copies of the locks: a lock dies with its build,
    not with the last worker still finishing a chunk after the build was killed."""
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_locks)
_OPTION_NAMES = {"image_root": "image root", "list_sha256": "list contents", "resize": "--resize", "gray": "--gray", "encoded": "--encoded",
                 "shuffle": "--no-shuffle", "seed": "--seed", "entries": "images listed", "list": "list"}


def settings(list_file: Path, entries: list[tuple[str, int]], options: BuildOptions, root: Path) -> dict:
    """What decides an LMDB's contents: its list (by path and by contents), the image root its
    paths are read under, and the options."""
    text = "".join(f"{path} {label}\n" for path, label in entries)
    return {"list": str(Path(list_file).resolve()), "image_root": str(Path(root).resolve()),
            "list_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "entries": len(entries), "resize": options.resize, "shuffle": options.shuffle, "seed": options.seed,
            "encoded": options.encoded, "gray": options.gray}


def difference(had: dict, wanted: dict) -> str:
    """The settings that differ, as a user gave them ('--resize 256, not 32; ...'); empty when
    none does. Builds of older versions recorded fewer: what they did not record is not compared."""
    return "; ".join(f"{_OPTION_NAMES.get(k, k)} {had[k]}, not {wanted[k]}" for k in wanted
                     if k in had and had[k] != wanted[k])


def refuse_foreign(out_dir: Path) -> None:
    """An error when OUT_DIR holds an LMDB, finished or half-built, that make-lmdb did not write:
    asked before anything is written (prepare asks before its lists)."""
    final, partial = Path(out_dir) / "lmdb", Path(out_dir) / "lmdb.partial"
    if final.exists() and not _ours(final, Path(out_dir) / "COMPLETE"):
        foreign = final
    elif partial.exists() and not ((partial / SETTINGS).is_file() or not any(partial.iterdir())):
        foreign = partial
    else:
        return
    raise CaffeTransferError(f"{foreign} was not written by make-lmdb (it has no {SETTINGS}): "
                             "move it away or choose another OUT_DIR; it is never deleted")


def _ours(final: Path, complete: Path) -> bool:
    """Whether a finished LMDB is make-lmdb's: its settings file, or COMPLETE as make-lmdb writes it
    (builds before the settings file stayed in the LMDB)."""
    if (final / SETTINGS).is_file():
        return True
    try:
        return "written" in json.loads(complete.read_text())
    except (OSError, ValueError, TypeError):
        return False


@dataclass
class Target:
    """An OUT_DIR and its list; while building, its open LMDB and progress."""

    list_file: Path
    out_dir: Path
    entries: list[tuple[str, int]]
    settings: dict
    env: lmdb.Environment | None = None
    state: State | None = None
    flusher: Flusher | None = None
    _lock: int | None = field(default=None, repr=False)

    @property
    def final(self) -> Path:
        return self.out_dir / "lmdb"

    @property
    def partial(self) -> Path:
        return self.out_dir / "lmdb.partial"

    @property
    def complete(self) -> Path:
        return self.out_dir / "COMPLETE"

    @property
    def mean(self) -> Path:
        return self.out_dir / "mean.binaryproto"

    def finished(self, force: bool) -> dict | None:
        """COMPLETE's record when OUT_DIR holds this very LMDB, finished (and not forced again);
        an error when it holds another."""
        refuse_foreign(self.out_dir)
        if not self.final.exists():
            return None
        if force or not self.complete.is_file():
            return None
        try:
            record = json.loads(self.complete.read_text())
        except ValueError as e:
            raise CaffeTransferError(f"{self.complete} is not valid JSON ({e}): --force rebuilds the LMDB") from None
        if difference(record, self.settings):
            raise CaffeTransferError(f"{self.final} was built with other settings ({difference(record, self.settings)})"
                                     ": --force rebuilds it, or choose another OUT_DIR")
        return record

    def lock(self) -> None:
        """Hold OUT_DIR's lock for the life of this build, or fail on one line."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise CaffeTransferError(f"cannot write {self.out_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise CaffeTransferError(f"{self.out_dir} is being built by another make-lmdb ({holder or 'a process'}):"
                                     " wait for it to finish, or choose another OUT_DIR") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._lock = fd
        _HELD.add(fd)

    def open(self, force: bool) -> None:
        """Open (or start) OUT_DIR/lmdb.partial of these settings and its progress."""
        partial, settings_file = self.partial, self.partial / SETTINGS
        refuse_foreign(self.out_dir)
        if partial.exists():
            had = json.loads(settings_file.read_text()) if settings_file.is_file() else self.settings
            if difference(had, self.settings) and not force:
                raise CaffeTransferError(f"{partial} is a build with other settings ({difference(had, self.settings)})"
                                         ": run it again as it was to finish it, or --force to start again")
            if force:
                shutil.rmtree(partial)
        partial.mkdir(exist_ok=True)
        write_atomic(settings_file, json.dumps(self.settings, indent=1) + "\n")
        # No fsync per commit: a killed process loses nothing the OS already has; synced at the end.
        # No writemap: mapped pages could not be dropped from the page cache (see Flusher). No
        # readahead: LMDB reads its tree through the map, and the pages the Flusher dropped fault
        # back one by one, not 32 at a time (a pass inserts into every leaf of its LMDBs: 20% of
        # its writer's CPU went into reading pages ahead that it never used).
        self.env = lmdb.open(str(partial), map_size=INITIAL_MAP_SIZE, max_dbs=2, sync=False, metasync=False,
                             readahead=False)
        self.state = State(self.env)
        self.flusher = Flusher(partial / "data.mdb")

    def reserve(self, size: int) -> None:
        """Take the disk blocks for the first `size` bytes of the LMDB before writing it (those
        it has are kept), past its end so that Caffe and LMDB see the file as it is. A disk too
        small, or filled by someone else meanwhile, then fails here rather than hours in; and ext4
        allocates the blocks at once instead of page by page as LMDB writes them (less CPU for
        the writer, docs/benchmarks.md). What is not filled is given back by `finish`; a killed
        build keeps it for its rerun."""
        try:
            fallocate = ctypes.CDLL(None, use_errno=True).fallocate
        except (AttributeError, OSError):
            return  # not Linux: the blocks are taken as LMDB writes
        fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fd = os.open(self.partial / "data.mdb", os.O_RDWR)
        try:
            if size > 0 and fallocate(fd, _KEEP_SIZE, 0, size) != 0:
                code = ctypes.get_errno()
                os.ftruncate(fd, os.fstat(fd).st_size)  # what a failed call took, given back
                if code == errno.ENOSPC:  # said on one line by the build, as a full disk while writing is
                    raise OSError(code, os.strerror(code), str(self.partial))
                if code == errno.EDQUOT:
                    raise CaffeTransferError(f"{self.out_dir}: over the disk quota when reserving {size:,} bytes for "
                                             "its LMDB: free some, or get a larger quota, and run the same command again")
                # any other failure: a file system without fallocate, which takes blocks as LMDB writes
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Remove a partial LMDB that fell short of its list (`make.shortfall`): the next run
        starts it again, trying every image; skipped.txt says what could not be read."""
        self.close()
        shutil.rmtree(self.partial)
        write_atomic(self.out_dir / "skipped.txt", "".join(f"{path}\t{text}\n" for path, text in self.state.skipped))

    def finish(self) -> bool:
        """Write the mean, drop the progress, rename to OUT_DIR/lmdb, write the reports and
        COMPLETE (last, so that it always describes a finished LMDB); whether there is a mean."""
        state = self.state
        has_mean = bool(state.count) and state.sum is not None
        if has_mean:
            write_mean(self.mean, state.sum, state.count)
        else:
            self.mean.unlink(missing_ok=True)
        with self.env.begin(write=True) as txn:
            txn.drop(state.db, delete=True)
        self.env.sync(True)
        self.close()
        data = self.partial / "data.mdb"
        os.truncate(data, data.stat().st_size)  # gives back the blocks `reserve` took past the end
        self.complete.unlink(missing_ok=True)
        if self.final.exists():
            shutil.rmtree(self.final)  # ours: finished() checked its settings file
        os.replace(self.partial, self.final)
        for name, listing in (("skipped.txt", state.skipped), ("warnings.txt", state.warned)):
            write_atomic(self.out_dir / name, "".join(f"{path}\t{text}\n" for path, text in listing))
        write_atomic(self.complete, json.dumps({**self.settings, "written": state.count, "skipped": len(state.skipped),
                                                "warned": len(state.warned), "mean": has_mean}, indent=1) + "\n")
        return has_mean

    def close(self) -> None:
        if self.flusher is not None:
            self.flusher.close()
            self.flusher = None
        if self.env is not None:
            self.env.close()
            self.env = None

    def unlock(self) -> None:
        if self._lock is not None:
            _HELD.discard(self._lock)
            os.close(self._lock)
            self._lock = None
