"""The authors' solver settings, as data: one place for every number of the schedule.

`paper` is the solver of every base, transfer, fine-tuned and random net (450k iterations, about
9.5 days on a K20); `reduced` is the reduced-data nets'. Fine-tuning used the full schedule with no
lower rate. Smaller schedules (the demo's) are these values with overrides.
"""

from __future__ import annotations

import math

from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.model.architectures import ProtoEnum

PAPER = {
    "test_iter": 1000,
    "test_interval": 1000,
    "base_lr": 0.01,
    "lr_policy": "step",
    "gamma": 0.1,
    "stepsize": 100000,
    "display": 20,
    "max_iter": 450000,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "snapshot": 10000,
}
SCHEDULES = {
    "paper": PAPER,
    "reduced": {**PAPER, "base_lr": 0.0125, "stepsize": 64000, "max_iter": 200000},
}
OVERRIDABLE = tuple(PAPER) + ("random_seed",)
# Values Caffe's types allow but its solver cannot run with (a zero stepsize, a negative max_iter).
POSITIVE = ("test_iter", "test_interval", "stepsize", "max_iter", "base_lr")
MAY_BE_NEGATIVE = ("random_seed",)  # -1 is Caffe's "seed from the clock"
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")  # Caffe's SGDSolver::GetLearningRate


def _check_known(key: str) -> None:
    if key not in OVERRIDABLE:
        raise CaffeTransferError(f"unknown solver field {key!r}: expected one of {', '.join(OVERRIDABLE)}")


def parse_override(key: str, text: str) -> int | float | str:
    """The value of solver field `key` from its text, of the type Caffe's own SolverParameter
    declares for it, so that `max_iter=1e3` fails here and not in `caffe train` or in a snapshot
    name."""
    from caffe_transfer.common.caffe_env import caffe_pb2

    _check_known(key)
    field = caffe_pb2().SolverParameter.DESCRIPTOR.fields_by_name[key]
    if field.cpp_type == field.CPPTYPE_STRING:
        if key == "lr_policy" and text not in LR_POLICIES:
            raise CaffeTransferError(f"solver lr_policy={text!r}: expected one of {', '.join(LR_POLICIES)}")
        return text
    integer = field.cpp_type in (field.CPPTYPE_INT32, field.CPPTYPE_INT64)
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = None
    limit = 2 ** (31 if field.cpp_type == field.CPPTYPE_INT32 else 63) if integer else math.inf
    if value is None or not math.isfinite(value) or not -limit <= value < limit:
        kind = "an integer" if integer else "a number"
        raise CaffeTransferError(f"solver {key}={text!r}: expected {kind} ({field.name} is "
                                 f"{'an int' if integer else 'a float'} in Caffe's SolverParameter)")
    if key in POSITIVE and value <= 0 or key not in MAY_BE_NEGATIVE and value < 0:
        raise CaffeTransferError(f"solver {key}={text!r}: expected a {'positive' if key in POSITIVE else 'non-negative'} "
                                 "value")
    return value


def solver_values(schedule: str, overrides: dict | None = None, gpu: bool = True) -> dict:
    """The solver fields (without file names) for `schedule`, with `overrides` applied."""
    if schedule not in SCHEDULES:
        raise CaffeTransferError(f"unknown schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    values = dict(SCHEDULES[schedule])
    for key, value in (overrides or {}).items():
        _check_known(key)
        values[key] = value
    values["solver_mode"] = ProtoEnum("GPU" if gpu else "CPU")
    return values
