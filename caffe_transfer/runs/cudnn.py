"""The switches a cuDNN build of Caffe reads from its environment (tools/caffe_fixes/
cudnn_switches.hpp, where Caffe parses them; docs/gpu.md says what each changes).

`gen --cudnn KEY=VALUE` records them in treatment.json; run.sh and `train` set exactly the
recorded ones for Caffe (the others empty, which Caffe reads as its default), so that the record
says what ran. The values are checked here too, so a bad one fails at `gen`, not hours later."""

from __future__ import annotations

from caffe_transfer.common.errors import CaffeTransferError

MAX_WORKSPACE_MB = 1 << 20  # as cudnn_switches.hpp
# --cudnn KEY: (Caffe's environment variable, its values: a tuple of choices, or None for MiB)
SWITCHES = {
    "workspace_mb": ("CAFFE_CUDNN_WORKSPACE_MB", None),
    "algo": ("CAFFE_CUDNN_ALGO", ("heuristic", "measure")),
    "deterministic": ("CAFFE_CUDNN_DETERMINISTIC", ("0", "1")),
    "tf32": ("CAFFE_TF32", ("0", "1")),
}


def parse_switch(key: str, value: str) -> tuple[str, str]:
    """KEY and VALUE of `--cudnn KEY=VALUE` as (Caffe's variable, value)."""
    if key not in SWITCHES:
        raise CaffeTransferError(f"--cudnn {key}: expected one of {', '.join(SWITCHES)}")
    variable, choices = SWITCHES[key]
    if choices is None:
        if not (value.isdecimal() and value.isascii() and int(value) <= MAX_WORKSPACE_MB):
            raise CaffeTransferError(f"--cudnn {key}={value}: expected a whole number of MiB from 0 to "
                                     f"{MAX_WORKSPACE_MB} (Caffe's default 8)")
    elif value not in choices:
        raise CaffeTransferError(f"--cudnn {key}={value}: expected {' or '.join(choices)}")
    return variable, value


def environment(recorded: dict[str, str] | None) -> dict[str, str]:
    """Every switch for Caffe's environment: the recorded ones, the others empty."""
    recorded = recorded or {}
    return {variable: recorded.get(variable, "") for variable, _ in SWITCHES.values()}


def describe(recorded: dict[str, str] | None) -> str:
    """The recorded switches in one field, VARIABLE=value ... ('' when none: Caffe's defaults)."""
    return " ".join(f"{k}={v}" for k, v in (recorded or {}).items())
