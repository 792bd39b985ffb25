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


@dataclass(frozen=True)
class Fingerprint:
    """What defines a run, as gen wrote it; digests are the first 12 hex digits of a sha256."""

    treatment: str
    net: str
    solver: str
    base: str

    @classmethod
    def of(cls, treatment: str, net: str, solver: str, base_weights: str | Path | None) -> Fingerprint:
        return cls(treatment, _digest(net), _digest(solver), _digest(str(base_weights)) if base_weights else "none")

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


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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
