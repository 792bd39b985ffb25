"""A run folder as `gen` wrote it: its treatment, its solver, its snapshots and its base.

`transplant`, `train` and the report all find a run's files through this module, so the rules
(the final snapshot is `<prefix>_iter_<max_iter>`, a transfer's base is the base run beside it,
the newest readable `.solverstate` is where a run resumes) are written once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.caffe_env import caffe_pb2
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.model.architectures import architecture
from caffe_transfer.model.treatments import LayerRole, Treatment, parse

DESCRIPTION = "treatment.json"
SOLVER = "solver.prototxt"
LOG = "train.log"
STATUS = "status.json"  # what `train` last said of the run: running (pid, host), finished, stopped, failed
INIT = "init.caffemodel"
_STATE = re.compile(r"_iter_(\d+)\.solverstate$")


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
        except (ValueError, KeyError) as e:
            raise CaffeTransferError(f"{path}: not a treatment description written by gen ({e})") from None
        solver = caffe_pb2().SolverParameter()
        try:
            text_format.Parse((run_dir / SOLVER).read_text(), solver)
        except (OSError, text_format.ParseError) as e:
            raise CaffeTransferError(f"{run_dir / SOLVER}: cannot read the solver ({e})") from None
        return cls(run_dir, description, treatment, solver)

    @property
    def name(self) -> str:
        return self.treatment.name

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

    def write_status(self, state: str, **fields) -> None:
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        write_atomic(self.dir / STATUS, json.dumps({"state": state, "at": stamp, **fields}) + "\n")

    def status(self) -> dict:
        """The last status `train` wrote ({} if none); a `running` whose process is gone on this
        host reads as `stopped`, and one on another host is taken at its word."""
        try:
            status = json.loads((self.dir / STATUS).read_text())
        except (OSError, ValueError):
            return {}
        if status.get("state") == "running" and status.get("host") == socket.gethostname():
            try:
                os.kill(status["pid"], 0)
            except (OSError, KeyError, TypeError):
                status = {**status, "state": "stopped", "error": "its trainer is gone"}
        return status

    @property
    def init_weights(self) -> Path:
        return self.dir / INIT

    def snapshot(self, iteration: int, suffix: str = ".caffemodel") -> Path:
        return self.dir / f"{self.solver.snapshot_prefix}_iter_{iteration}{suffix}"

    @property
    def final_model(self) -> Path:
        """The .caffemodel Caffe writes when the run reaches max_iter: the hand-off to transfers."""
        return self.snapshot(self.max_iter)

    @property
    def finished(self) -> bool:
        return self.final_model.is_file()

    def states(self) -> list[tuple[int, Path]]:
        """The run's .solverstate files with their iterations, oldest first."""
        folder = self.snapshot(0).parent
        if not folder.is_dir():
            return []
        found = [(int(m[1]), p) for p in folder.iterdir() if (m := _STATE.search(p.name))
                 and p.name.startswith(Path(self.solver.snapshot_prefix).name + "_iter_")]
        return sorted(found)

    def resume_state(self) -> tuple[int, Path] | None:
        """The newest snapshot Caffe can resume from (iteration, .solverstate), or None.

        A snapshot cut short by a kill (empty or unparsable state, missing or empty weights) is
        passed over for the one before it. A state whose `learned_net` points elsewhere (a run
        folder that was moved, an absolute snapshot prefix) is repointed at the .caffemodel beside
        it, because Caffe opens that path relative to its working directory."""
        pb2 = caffe_pb2()
        for iteration, path in reversed(self.states()):
            state = pb2.SolverState()
            try:
                state.ParseFromString(path.read_bytes())
            except DecodeError:
                continue
            model = self.snapshot(iteration)
            if state.iter != iteration or not model.is_file() or model.stat().st_size == 0:
                continue
            wanted = str(model.relative_to(self.dir))
            if state.learned_net != wanted and not (self.dir / state.learned_net).is_file():
                state.learned_net = wanted
                write_atomic(path, state.SerializeToString())
            return iteration, path
        return None

    # --- the base a transfer copies from ----------------------------------------------------
    @property
    def base_dir(self) -> Path | None:
        base = self.treatment.base
        return self.dir.parent / base.name if base else None

    def base_weights(self) -> Path:
        """The base net's weights: those given to `gen --base-weights`, else the final snapshot of
        the base run beside this one (by the base's own solver, wherever the folders moved), else
        the path `gen` derived. Missing, it is an error naming the run to train first."""
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
            recorded = base_run.final_model
        elif recorded.is_file():
            return recorded
        raise CaffeTransferError(
            f"{self.name} needs the final snapshot of its base {base.name} ({recorded}), which does not "
            f"exist: train the base first (caffe-transfer train {beside})")
