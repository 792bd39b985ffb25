"""What a run folder's files record about how it was made: the fingerprint, and the snapshots
`train.log` shows written, each with the fingerprint of the session that wrote it.

A session's header line in `train.log` (written by `train` and by `run.sh` before Caffe starts)
ends with `fingerprint treatment=... net=... solver=... base=...`. Caffe logs "Snapshotting solver
state to binary proto file F" before it writes F and its next line after, so a .solverstate
followed by a line of Caffe's is whole; one a kill cut short is not. `run.sh` reads the log by
the same rule (with awk).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, fields
from pathlib import Path

NET = "train_val.prototxt"
SOLVER = "solver.prototxt"
SESSION = "==> "  # starts the line each session writes in train.log before Caffe's output
STATE_WRITTEN = "Snapshotting solver state to binary proto file "  # Caffe, before it writes one
_STATE_LINE = re.compile(rb"Snapshotting solver state to binary proto file (\S+)_iter_(\d+)\.solverstate")
_GLOG = re.compile(rb"[IWEF](\d{4})?\d{4} ")  # a line of Caffe's: severity, [year,] month, day
_FINGERPRINT = re.compile(rb"fingerprint (treatment=\S+ net=\S+ solver=\S+ base=\S+)")
_SNAPSHOT_LINE = re.compile(rb"Snapshotting (?:solver state )?to binary proto file (\S+)")


@dataclass(frozen=True)
class Fingerprint:
    """What defines a run, as gen wrote it; digests are the first 12 hex digits of a sha256."""

    treatment: str
    net: str
    solver: str
    base: str

    @classmethod
    def of(cls, treatment: str, net: str, solver: str, base_weights: str | Path | None) -> Fingerprint:
        return cls(treatment, digest(net), digest(solver), digest(str(base_weights)) if base_weights else "none")

    @classmethod
    def parse(cls, text: str) -> Fingerprint | None:
        values = dict(item.partition("=")[::2] for item in text.split())
        return cls(**values) if set(values) == {f.name for f in fields(cls)} else None

    def __str__(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    def changes(self, since: Fingerprint | None) -> str:
        """What differs from `since`, in words ('no fingerprint recorded' for None)."""
        if since is None:
            return "no fingerprint recorded"
        words = {"net": NET, "solver": SOLVER, "base": "base weights"}
        return ", ".join(f"treatment {since.treatment} -> {self.treatment}" if f.name == "treatment"
                         else f"{words[f.name]} changed" for f in fields(self)
                         if getattr(self, f.name) != getattr(since, f.name))


def digest(data: str | bytes) -> str:
    """The first 12 hex digits of the sha256 of `data` (text as UTF-8)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:12]


def file_digest(path: Path) -> str:
    """The digest of a file as it is now ('missing' when there is none): gen's text once written."""
    try:
        return digest(Path(path).read_bytes())
    except FileNotFoundError:
        return "missing"


def sha256(path: Path) -> str:
    """The whole sha256 of a file, once per version of it in a process (base weights are large)."""
    stat = Path(path).stat()
    return _sha256(Path(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def session_runs(log: Path) -> set[str]:
    """The runs (treatment names) whose sessions' header lines are in a log: a log copied from
    another run folder names that run."""
    with open(log, "rb") as f:
        return {fingerprint.treatment for line in f if line.startswith(SESSION.encode())
                and (m := _FINGERPRINT.search(line)) and (fingerprint := Fingerprint.parse(m[1].decode()))}


@functools.lru_cache(maxsize=1024)
def mentioned(log: Path, size: int, mtime_ns: int) -> frozenset[str]:
    """Every snapshot file train.log says Caffe began to write (as Caffe names it), whole or cut:
    the files on disk that a record explains."""
    with open(log, "rb") as f:
        return frozenset(m[1].decode(errors="replace") for line in f if (m := _SNAPSHOT_LINE.search(line)))


@functools.lru_cache(maxsize=1024)
def written(log: Path, size: int, mtime_ns: int) -> dict[tuple[str, int], Fingerprint | None]:
    """(path less `_iter_N.solverstate`, N) -> fingerprint of its session, for each .solverstate
    that train.log shows finished (a line of Caffe's follows the one it logs before writing the
    file), in the order they were written, last written last."""
    found, fingerprint, pending = {}, None, None
    with open(log, "rb") as f:
        for line in f:
            if line.startswith(SESSION.encode()):
                m = _FINGERPRINT.search(line)
                fingerprint, pending = Fingerprint.parse(m[1].decode()) if m else None, None
                continue
            if pending and _GLOG.match(line):
                found.pop(pending, None)  # written again: it moves to the end
                found[pending] = fingerprint
                pending = None
            if STATE_WRITTEN.encode() in line and (m := _STATE_LINE.search(line)):
                pending = (m[1].decode(), int(m[2]))
    return found
