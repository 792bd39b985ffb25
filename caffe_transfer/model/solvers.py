"""The authors' solver settings, as data: one place for every number of the schedule.

`paper` is the solver of every base, transfer, fine-tuned and random net (450k iterations, about
9.5 days on a K20); `reduced` is the reduced-data nets'. Fine-tuning used the full schedule with no
lower rate. Smaller schedules (the demo's) are these values with overrides.
"""

from __future__ import annotations

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


def solver_values(schedule: str, overrides: dict | None = None, gpu: bool = True) -> dict:
    """The solver fields (without file names) for `schedule`, with `overrides` applied."""
    if schedule not in SCHEDULES:
        raise CaffeTransferError(f"unknown schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    values = dict(SCHEDULES[schedule])
    for key, value in (overrides or {}).items():
        if key not in OVERRIDABLE:
            raise CaffeTransferError(f"unknown solver field {key!r}: expected one of {', '.join(OVERRIDABLE)}")
        values[key] = value
    values["solver_mode"] = ProtoEnum("GPU" if gpu else "CPU")
    return values
