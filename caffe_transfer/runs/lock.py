"""One process at a time in a run folder (and one `run-all` per plan folder): an exclusive
`flock` on `FOLDER/.lock`.

The lock belongs to the open file, not to a process, so the Caffe child inherits it (its fd is
passed on) and the lock lasts as long as Caffe does, even when the trainer is gone; the kernel
drops it when the last holder exits, so a killed holder never leaves a stale lock. `run.sh` takes
the same lock with util-linux's `flock`. On NFS, Linux clients carry `flock` as an `fcntl` lock to
the server, so two hosts sharing a folder exclude each other too. The file holds a line naming
the holder (what, pid, host, since when) for the error the next comer sees.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
from pathlib import Path

from caffe_transfer.common.errors import CaffeTransferError

LOCK = ".lock"


class Lock:
    """An exclusive lock on a run folder, taken on creation; `fileno` is what a child inherits."""

    def __init__(self, run_dir: Path, what: str):
        self.path = Path(run_dir) / LOCK
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = _read(self.fd) or "another process"
            os.close(self.fd)
            raise CaffeTransferError(f"{run_dir} is in use by {held_by}: wait for it to end, or stop it") from None
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{what} (pid {os.getpid()} on {socket.gethostname()} since {stamp})\n".encode(), 0)

    def fileno(self) -> int:
        return self.fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the lock ends when every process holding this file has closed it
            self.fd = -1

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(run_dir: Path) -> str | None:
    """Who holds the run folder's lock now (the line they wrote), or None when nobody does."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except OSError:  # no lock file (nobody ever held it), or no folder at all
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _read(fd) or "another process"
    finally:
        os.close(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace").strip()
