"""Progress of long work, shown as suits where it goes: the one place that decides.

On a terminal, tqdm's bar, redrawn in place. Anywhere else (a SLURM log, `nohup`, `demo.sh > log`)
a redrawn bar is a carriage-return frame per update, over a thousand of them in one demo's log;
there, `progress` gives a plain line with the same facts (count, percent, elapsed, left, rate and
the caller's postfix) at most every PLAIN_EVERY seconds, and one at the end. Both answer the
calls the callers make: update, set_postfix, set_postfix_str, write and close.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

from tqdm import tqdm

PLAIN_EVERY = 30.0  # seconds between two plain lines
PLAIN_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class PlainLines:
    """tqdm's facts as plain lines, for a stream that is not a terminal."""

    def __init__(self, total: int, desc: str, unit: str, initial: int, stream: TextIO,
                 clock: Callable[[], float]):
        self.total, self.desc, self.unit, self.initial = total, desc, unit, initial
        self.n, self.postfix, self.stream, self.clock = initial, "", stream, clock
        self.started = self.shown = clock()
        self.closed = False
        self.lock = threading.Lock()  # the grid's runs update it from their threads

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.n += n
        self._maybe_show()

    # `refresh` as tqdm's, which redraws at once; a plain line waits for its time all the same.
    def set_postfix(self, values: dict, refresh: bool = True) -> None:
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in values.items()), refresh)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text
        self._maybe_show()

    def write(self, line: str, file: TextIO | None = None) -> None:
        print(line, file=file or self.stream, flush=True)

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self._print()

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = (self.n - self.initial) / elapsed if elapsed > 0 and self.n > self.initial else None
        return tqdm.format_meter(self.n, self.total, elapsed, prefix=self.desc, unit=self.unit, rate=rate,
                                 postfix=self.postfix or None, bar_format=PLAIN_FORMAT)

    def _maybe_show(self) -> None:
        with self.lock:
            now = self.clock()
            if self.closed or now - self.shown < PLAIN_EVERY:
                return
            self.shown = now
        self._print()

    def _print(self) -> None:
        print(self.line(), file=self.stream, flush=True)


def progress(total: int, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True,
             smoothing: float = 0.05, stream: TextIO | None = None,
             clock: Callable[[], float] = time.monotonic) -> tqdm | PlainLines:
    """A progress display on `stream` (default: stderr, as tqdm's): tqdm's bar on a terminal
    (none when not `enabled`), else PlainLines, timed by `clock`."""
    stream = stream or sys.stderr
    if enabled and not (hasattr(stream, "isatty") and stream.isatty()):
        return PlainLines(total, desc, unit, initial, stream, clock)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, file=stream,
                dynamic_ncols=True, smoothing=smoothing)
