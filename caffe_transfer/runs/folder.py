"""A run folder and its rules, in one place: its files, fingerprint, lock, snapshots and state.

`gen` writes the folder and its fingerprint; `transplant`, `train`, `status`, `run-all`, SLURM
tasks and `run.sh` (rendered from what this module resolves) ask it and derive nothing:
- the fingerprint says what defines the run (treatment, the net and solver files as Caffe reads
  them, base weights); `transplant.json` and each training session (its header line in
  `train.log`) record the one they were made for, so weights of an earlier version of the folder
  (or of a hand-edited solver) are never trained from; `transplant.json` also records the sha256
  of the base weights, so an init made from a base that changed since is made again, and of the
  init, so one replaced by hand is refused (never written over), and a transfer part-trained from
  a base that has changed since is not resumed (it would mix two experiments);
- a snapshot counts once `train.log` shows Caffe went on after writing its `.solverstate` (Caffe
  writes the `.caffemodel`, then the state, then logs its next line), so one cut short by a kill
  is passed over for the one before it, as is one whose `.caffemodel` or `.solverstate` is cut
  or empty (`_whole`); the final snapshot is the one at `max_iter`;
- whole snapshots on disk that `train.log` never mentions (a log deleted, emptied or cut) are
  never overwritten by a fresh start: the run refuses until they are moved aside;
- gen's files are gen's while treatment.json records their digests: others are the user's;
- one trainer at a time holds the folder's lock (`lock.py`) for the life of its Caffe;
- the state (waiting, ready, running, stopped, failed, done) follows from the above.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.caffe_env import DATA_THREADS_MAX, caffe_pb2
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.model.architectures import architecture
from caffe_transfer.model.treatments import Kind, LayerRole, Treatment, parse
from caffe_transfer.runs.lock import LOCK, Lock, holder
from caffe_transfer.runs.records import (
    NET,
    SESSION,
    SOLVER,
    STATE_WRITTEN,
    Fingerprint,
    file_digest,
    mentioned,
    sha256,
    written,
)

DESCRIPTION = "treatment.json"
LOG = "train.log"
STATUS = "status.json"  # how the last session ended (failed, with its error; stopped; done)
INIT = "init.caffemodel"
RECORD = "transplant.json"
SNAPSHOT_DIR = "snapshots"
STOPPED_EXIT = 130  # a trainer's exit status when its run stopped with a snapshot (as after Ctrl-C)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each makes Caffe snapshot and stop
KILLED_BY = (*SIGNALS, signal.SIGKILL)  # what ends Caffe as a stop (it resumes), not a failure
KILLED_STATUSES = " ".join(str(128 + s) for s in KILLED_BY)  # bash's $? for each (STOPPED_EXIT among them)


class State(str, Enum):
    """Where a run stands: the one list `status`, `run-all` and `train` report (and SLURM tasks
    through STOPPED_EXIT)."""

    WAITING = "waiting"  # for its base's final snapshot
    READY = "ready"
    RUNNING = "running"
    STOPPED = "stopped"  # by a signal or a kill; resumes from its newest snapshot
    FAILED = "failed"
    DONE = "done"


def snapshot_prefix(name: str) -> str:
    """The solver's snapshot_prefix, relative to the run folder (Caffe's working directory)."""
    return f"{SNAPSHOT_DIR}/{name}"


def snapshot_file(prefix: str, iteration: int, suffix: str = ".caffemodel") -> str:
    return f"{prefix}_iter_{iteration}{suffix}"


def has_snapshots(run_dir: Path) -> bool:
    """Any snapshot file at all, whole or cut, of any version: what `gen` must not overwrite."""
    snaps = Path(run_dir) / SNAPSHOT_DIR
    return snaps.is_dir() and any(p.suffix in (".caffemodel", ".solverstate") for p in snaps.iterdir())


def foreign_files(run_dir: Path, names: list[str]) -> list[str]:
    """Those of `names` in `run_dir` that gen did not write as they are now (its treatment.json
    records each file's digest): the user's own files or edits, which writing the folder again
    would lose."""
    run_dir = Path(run_dir)
    try:
        files = json.loads((run_dir / DESCRIPTION).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = {}

    def theirs(name: str) -> bool:
        return not files if name == DESCRIPTION else files.get(name) != file_digest(run_dir / name)

    return [name for name in names if (run_dir / name).exists() and theirs(name)]


def script_values(treatment: Treatment, max_iter: int, fingerprint: Fingerprint, base_weights: Path | None,
                  base_given: bool) -> dict:
    """What run.sh prints, resolved here so that the script holds values and no rules of its own.
    A transfer's run.sh with no usable init starts from `base_weights` when they were given to gen,
    else from the final snapshot the base's own run.sh names (`base_weights` if it has none)."""
    prefix = snapshot_prefix(treatment.name)
    base = treatment.base
    return {"name": treatment.name, "description": treatment.describe(), "fingerprint": fingerprint,
            "net": NET, "solver": SOLVER, "prefix": prefix, "snapshot_dir": SNAPSHOT_DIR,
            "final": snapshot_file(prefix, max_iter), "final_stem": snapshot_file(prefix, max_iter, ""),
            "log": LOG, "lock": LOCK, "status": STATUS, "record": RECORD,
            "init": INIT if treatment.kind in (Kind.TRANSFER, Kind.RANDOM) else None,
            "base": base.name if base else None, "base_weights": base_weights,
            "base_dir": Path("..") / base.name if base and not base_given else None,
            "session": SESSION, "state_written": STATE_WRITTEN, "stopped_exit": STOPPED_EXIT,
            "data_threads_max": DATA_THREADS_MAX, "killed_by": KILLED_STATUSES, "fixed_wire_sizes": _FIXED}


@dataclass(frozen=True)
class Snapshot:
    """A snapshot train.log shows written to the end, with the fingerprint of its session."""

    iteration: int
    state: Path
    model: Path
    fingerprint: Fingerprint | None


@dataclass(frozen=True)
class Run:
    dir: Path
    description: dict
    treatment: Treatment
    solver: object  # caffe_pb2.SolverParameter of solver.prototxt

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        """The run in `run_dir`; a folder `gen` did not write is a one-line error."""
        run_dir = Path(run_dir).resolve()
        path = run_dir / DESCRIPTION
        if not path.is_file():
            raise CaffeTransferError(
                f"{run_dir} is not a run folder: no {DESCRIPTION} (write one with caffe-transfer gen)")
        try:
            description = json.loads(path.read_text())
            treatment = parse(description["name"])
            if Fingerprint.parse(description["fingerprint"]) is None:
                raise ValueError(f"fingerprint {description['fingerprint']!r}")
        except (ValueError, KeyError) as e:
            raise CaffeTransferError(f"{path}: not a treatment description written by gen ({e}): "
                                     "write the folder again with caffe-transfer gen") from None
        solver = caffe_pb2().SolverParameter()
        try:
            text_format.Parse((run_dir / SOLVER).read_text(), solver)
        except (OSError, text_format.ParseError) as e:
            raise CaffeTransferError(f"{run_dir / SOLVER}: cannot read the solver ({e})") from None
        return cls(run_dir, description, treatment, solver)

    @property
    def name(self) -> str:
        return self.treatment.name

    @property
    def fingerprint(self) -> Fingerprint:
        """gen's fingerprint with the net and solver as Caffe reads them now: a file edited by
        hand makes another version of the run, whose snapshots and init are not this one's."""
        made = Fingerprint.parse(self.description["fingerprint"])
        return replace(made, net=file_digest(self.dir / NET), solver=file_digest(self.dir / SOLVER))

    def roles(self) -> list[LayerRole]:
        """What the treatment model says of each weight layer of this run's architecture."""
        arch = architecture(self.description["architecture"], self.description["fc8_outputs"])
        return self.treatment.layer_roles([w.name for w in arch.weight_layers])

    @property
    def max_iter(self) -> int:
        return self.solver.max_iter

    @property
    def log(self) -> Path:
        return self.dir / LOG

    def lock(self, what: str) -> Lock:
        """Hold the folder for `what` (a one-line error naming the holder when it is taken)."""
        return Lock(self.dir, what)

    def session_line(self, by: str, begin: str, command: str) -> str:
        """The line a session writes in train.log before Caffe's output, its fingerprint last."""
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        return f"{SESSION}{by} {self.name}: {begin} at {stamp}: {command}; fingerprint {self.fingerprint}"

    def write_status(self, state: State, **fields) -> None:
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        write_atomic(self.dir / STATUS, json.dumps({"state": state.value, "at": stamp, **fields}) + "\n")

    # --- snapshots --------------------------------------------------------------------------
    @property
    def init_weights(self) -> Path:
        return self.dir / INIT

    @property
    def snapshot_prefix(self) -> str:
        return self.solver.snapshot_prefix

    def snapshot(self, iteration: int, suffix: str = ".caffemodel") -> Path:
        return self.dir / snapshot_file(self.snapshot_prefix, iteration, suffix)

    @property
    def final_model(self) -> Path:
        """The .caffemodel Caffe writes when the run reaches max_iter: the hand-off to transfers."""
        return self.snapshot(self.max_iter)

    def snapshots(self) -> list[Snapshot]:
        """The snapshots train.log shows written to the end whose files are there (whole or not),
        last written last; those of an earlier version of the folder (another prefix, too) among them."""
        if not self.log.is_file():
            return []
        stat = self.log.stat()
        found = []
        for (prefix, iteration), fingerprint in written(self.log, stat.st_size, stat.st_mtime_ns).items():
            state, model = (self.dir / snapshot_file(prefix, iteration, suffix) for suffix in (".solverstate",
                                                                                              ".caffemodel"))
            if state.is_file() and model.is_file():
                found.append(Snapshot(iteration, state, model, fingerprint))
        return found

    def resume_state(self) -> Snapshot | None:
        """The newest snapshot Caffe can resume from, or None (the rule run.sh follows too); it
        is this version's unless `stale` says otherwise.

        One whose .solverstate or .caffemodel is not whole (cut short or empty: `_whole`, which
        run.sh checks too), or whose state Caffe cannot read, is passed over as well. One whose
        `learned_net` points elsewhere (a run folder that was moved, an absolute snapshot prefix)
        is repointed at the .caffemodel beside it, because Caffe opens that path relative to its
        working directory."""
        pb2 = caffe_pb2()
        for snap in reversed(self.snapshots()):
            if not (_whole(snap.state) and _whole(snap.model)):
                continue
            state = pb2.SolverState()
            try:
                state.ParseFromString(snap.state.read_bytes())
            except DecodeError:
                continue
            if state.iter != snap.iteration:
                continue
            wanted = str(snap.model.relative_to(self.dir))
            if state.learned_net != wanted and not (self.dir / state.learned_net).is_file():
                state.learned_net = wanted
                write_atomic(snap.state, state.SerializeToString())
            return snap
        return None

    def stale(self, snap: Snapshot | None) -> str | None:
        """Why `snap` belongs to another version of this folder (one line with the way out), or None."""
        if snap is None or snap.fingerprint == self.fingerprint:
            return None
        return (f"{self.dir}: {snap.state.name} was made for another version of this run folder "
                f"({self.fingerprint.changes(snap.fingerprint)}): move {SNAPSHOT_DIR}/ and {LOG} aside "
                f"to train afresh, or gen it again as it was")

    def unrecorded(self, snap: Snapshot | None) -> str | None:
        """Why training on from `snap` (or afresh) would overwrite whole snapshots that train.log
        does not mention (it was deleted, emptied or cut), in one line with the way out; or None."""
        prefix = self.dir / self.snapshot_prefix
        said = frozenset()
        if self.log.is_file():
            stat = self.log.stat()
            said = mentioned(self.log, stat.st_size, stat.st_mtime_ns)
        pattern = re.compile(rf"{re.escape(prefix.name)}_iter_(\d+)\.(?:caffemodel|solverstate)")
        after = snap.iteration if snap else 0
        found = sorted({int(m[1]) for p in (prefix.parent.iterdir() if prefix.parent.is_dir() else ())
                        if (m := pattern.fullmatch(p.name)) and int(m[1]) > after})
        for iteration in found:
            files = [snapshot_file(self.snapshot_prefix, iteration, suffix) for suffix in (".caffemodel", ".solverstate")]
            if not said.intersection(files) and any(_whole(self.dir / f) for f in files):
                return (f"{self.dir}: {files[0]} is a snapshot that {LOG} does not record, and training "
                        f"{f'on from iteration {after}' if snap else 'afresh'} would overwrite it: move "
                        f"{SNAPSHOT_DIR}/ aside (or put back the {LOG} that wrote it)")
        return None

    @property
    def finished(self) -> bool:
        """Its final snapshot is written, by a session of this version of the folder."""
        snap = self.resume_state()
        return snap is not None and snap.iteration >= self.max_iter and not self.stale(snap)

    def _record(self) -> dict:
        """transplant.json: what the init was made for, and from; {} when there is none."""
        try:
            record = json.loads((self.dir / RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def init_problem(self) -> str | None:
        """Why init.caffemodel is not this run's start (missing, or made for another version of
        the folder or from another base), or None when it is."""
        if not self.init_weights.is_file():
            return f"no {INIT}"
        record = self._record()
        if not record:
            return f"{INIT} has no {RECORD}"
        made_for = Fingerprint.parse(record.get("fingerprint") or "")
        if made_for != self.fingerprint:
            return f"{INIT} was made for another version of this folder ({self.fingerprint.changes(made_for)})"
        if self.treatment.kind is not Kind.TRANSFER or record.get("base_chosen"):
            return None
        try:
            base = self.base_weights()
        except CaffeTransferError:
            if self.description["base_weights_given"] or not (self.base_dir / DESCRIPTION).is_file():
                return None  # the base is gone; the init was made from it when it was there
            return f"its base {self.treatment.base.name} has no final snapshot of this version now"
        if record.get("base") != str(base) and not self.description["base_weights_given"]:
            return f"{INIT} was made from {record.get('base')}, and the base is now {base}"
        if _changed_since(record, base):
            return f"{INIT} was made from {base} as it was before: it has changed since"
        return None

    def base_changed(self, snap: Snapshot | None) -> str | None:
        """Why a transfer must not go on from `snap`: its init was made (transplant.json, of this
        version of the folder, from the run's own base) from base weights that have changed since
        (retrained or replaced), and resuming would mix two experiments. One line with the way
        out, or None; a finished transfer is a whole experiment of its base as it was, and a base
        not finished now (or gone) leaves nothing to compare. run.sh follows the same rule."""
        record = self._record()
        if (snap is None or snap.iteration >= self.max_iter or self.treatment.kind is not Kind.TRANSFER
                or record.get("base_chosen") or Fingerprint.parse(record.get("fingerprint") or "") != self.fingerprint):
            return None
        try:
            base = self.base_weights()
        except CaffeTransferError:
            return None
        if not _changed_since(record, base):
            return None
        return (f"{self.dir}: its snapshots were trained from {base} as it was before, and it has changed "
                f"since: move {SNAPSHOT_DIR}/ and {LOG} aside to train afresh from it, or put the old base back")

    def init_replaced(self) -> str | None:
        """Why init.caffemodel is not the file transplant wrote (its sha256 in transplant.json),
        in one line with the way out; or None. It may be the user's: it is never written over."""
        wanted = self._record().get("init_sha256")
        if wanted is None or not self.init_weights.is_file() or sha256(self.init_weights) == wanted:
            return None
        return (f"{self.init_weights} is not the file transplant wrote ({RECORD} records another sha256): "
                f"transplant again (caffe-transfer transplant {self.dir}), or move it and {RECORD} aside")

    # --- state --------------------------------------------------------------------------------
    def state(self) -> tuple[State, str]:
        """Where the run stands, with a detail (the holder, the error, the base it waits for)."""
        held_by = holder(self.dir)
        if held_by:
            return State.RUNNING, held_by
        snap = self.resume_state()
        problem = self.stale(snap) or self.unrecorded(snap) or self.base_changed(snap)
        if problem:
            return State.FAILED, problem
        if snap and snap.iteration >= self.max_iter:
            return State.DONE, ""
        try:
            status = json.loads((self.dir / STATUS).read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("state") == State.FAILED.value:
            return State.FAILED, status.get("error", "")
        if snap:
            return State.STOPPED, f"resumes from iteration {snap.iteration}"
        if self.treatment.kind is Kind.TRANSFER and self.init_problem():
            try:
                self.base_weights()
            except CaffeTransferError:
                return State.WAITING, f"for {self.treatment.base.name}"
        return State.READY, ""

    # --- the base a transfer copies from ----------------------------------------------------
    @property
    def base_dir(self) -> Path | None:
        base = self.treatment.base
        return self.dir.parent / base.name if base else None

    def base_weights(self) -> Path:
        """The base net's weights: those given to `gen --base-weights`, else the final snapshot of
        the base run beside this one (by the base's own solver, wherever the folders moved), else
        the path `gen` derived. Missing or stale, it is an error naming the run to train first."""
        base = self.treatment.base
        if base is None:
            raise CaffeTransferError(f"{self.name} ({self.treatment.family}) copies no layers: it has no base")
        recorded = Path(self.description["base_weights"])
        if self.description.get("base_weights_given"):
            if not recorded.is_file():
                raise CaffeTransferError(f"{self.name}: base weights {recorded} (given to gen) do not exist")
            return recorded
        beside = self.base_dir
        if (beside / DESCRIPTION).is_file():
            base_run = Run.load(beside)
            if base_run.finished:
                return base_run.final_model
            stale = base_run.stale(base_run.resume_state())
            if stale:
                raise CaffeTransferError(f"{self.name} needs the final snapshot of its base, but {stale}")
            recorded = base_run.final_model
        elif recorded.is_file():
            return recorded
        raise CaffeTransferError(
            f"{self.name} needs the final snapshot of its base {base.name} ({recorded}), which does not "
            f"exist: train the base first (caffe-transfer train {beside})")


def _changed_since(record: dict, base: Path) -> bool:
    """transplant.json records the sha256 the base weights had, and they have another now."""
    return record.get("base_sha256") not in (None, sha256(base))


_FIXED = {1: 8, 5: 4}  # protobuf wire types of fixed size: their bytes (run.sh's `whole` prints them)


def _whole(path: Path) -> bool:
    """The file ends where its last top-level protobuf field ends. A .caffemodel or .solverstate
    cut short (a kill, a full disk) ends inside one, as its layers are length-delimited; this
    reads the field keys only, never the weights. run.sh's `whole` walks the file the same way."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            at = 0
            while at < size:
                wire = _varint(f) & 7
                if wire == 0:  # the value is the field
                    _varint(f)
                    skip = 0
                elif wire == 2:
                    skip = _varint(f)  # a length, then that many bytes
                elif wire in _FIXED:
                    skip = _FIXED[wire]
                else:
                    return False
                at = f.seek(skip, 1)
        return 0 < size == at
    except (OSError, EOFError):
        return False


def _varint(f) -> int:
    value = shift = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise EOFError
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if byte[0] < 0x80:
            return value
