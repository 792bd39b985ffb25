"""Writing files so that a reader never sees half of one: a temporary name, then a rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes, mode: int = 0o666) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    The file gets `mode` less the umask, as `open` would give it (mkstemp alone makes it 0600)."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a device or a pipe (/dev/null, /dev/stdout): write
        with open(path, "wb" if isinstance(data, bytes) else "w") as f:  # into it, never replace it
            f.write(data)
        return
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, mode & ~_umask())
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # name the file asked for (a full disk's write() names none)
            e.filename, e.filename2 = str(path), None
        raise


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask
