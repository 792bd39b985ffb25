"""Values printed into the shell and sbatch scripts the package writes (run.sh, SLURM arrays).

A quoted word cannot run as a command, but a newline still ends a comment or an `#SBATCH` line
and a carriage return hides text in a terminal, so control characters are refused outright.
"""

from __future__ import annotations

import re
import shlex

from caffe_transfer.common.errors import CaffeTransferError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(value: object, what: str = "a value") -> str:
    """`value` as text, refused if it holds a control character that could end its line."""
    text = str(value)
    if _CONTROL.search(text):
        raise CaffeTransferError(f"{what} {text!r} holds a control character (newline, tab, ...): "
                                 "not allowed in what goes into a generated script")
    return text


def shell_word(value: object) -> str:
    """`value` as one quoted shell word on one line."""
    return shlex.quote(one_line(value))
