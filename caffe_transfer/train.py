"""Running the real `caffe train` on a run folder: start, resume, stop without losing work.

A run starts from scratch (bases, full, reduced), from the weights `transplant` wrote (transfers
and random-frozen nets; made on the spot from the base's final snapshot when missing), or, when it
has snapshots, from its newest readable `.solverstate` (never `-snapshot` with `-weights`, which
Caffe refuses). Caffe runs in the run folder, its log appended to `train.log` line by line, with a
progress bar of iteration, loss, latest val accuracy and time left. SIGINT or SIGTERM becomes
Caffe's own SIGINT, on which it snapshots and stops (`-sigint_effect stop` with
`snapshot_after_train`); a SIGKILL of this process takes Caffe with it, and the next start resumes
from the last snapshot.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from . import logs
from .caffe_env import cuda_build, tool
from .errors import CaffeTransferError
from .runs import Run
from .treatments import Kind

HEADER = "==> caffe-transfer train"  # starts the line written before each session in train.log
_PR_SET_PDEATHSIG = 1


@dataclass
class Start:
    """How a session of `caffe train` begins."""

    args: list[str]   # arguments after `caffe train -solver solver.prototxt`
    iteration: int
    what: str         # for the log and the user


@dataclass
class TrainResult:
    run: Run
    status: str       # finished, already finished, or stopped (by a signal, with a snapshot)
    start: int
    iteration: int
    seconds: float


def start(run: Run) -> Start:
    """Where the next session of `run` begins; makes the transplant a transfer needs first."""
    resume = run.resume_state()
    if resume:
        iteration, state = resume
        return Start(["-snapshot", str(state.relative_to(run.dir))], iteration,
                     f"resuming from {state.name}")
    if run.treatment.kind in (Kind.TRANSFER, Kind.RANDOM):
        if not run.init_weights.is_file():
            from .surgery import transplant

            transplant(run.dir)
        return Start(["-weights", run.init_weights.name], 0, f"starting from {run.init_weights.name}")
    return Start([], 0, "starting from the filler init")


def command(run: Run, begin: Start, gpu: int | None = None) -> list[str]:
    mode = run.solver.solver_mode
    if gpu is None and mode == run.solver.GPU and not cuda_build():
        raise CaffeTransferError(
            f"{run.dir / 'solver.prototxt'} says solver_mode: GPU but this Caffe is CPU-only: "
            "regenerate the run with `gen --cpu`, or build Caffe with CAFFE_CUDA=1")
    cmd = [str(tool("caffe")), "train", "-solver", "solver.prototxt", *begin.args,
           "-sigint_effect", "stop", "-sighup_effect", "snapshot"]
    return cmd + (["-gpu", str(gpu)] if gpu is not None else [])


def _die_with_parent() -> None:
    """In the child: a SIGKILL of the trainer must not leave Caffe running unattended."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def train(run_dir: str | Path, gpu: int | None = None, progress: bool = True) -> TrainResult:
    """Train (or resume) the run in `run_dir` to its max_iter with the real `caffe train`."""
    run = Run.load(run_dir)
    if run.finished:
        return TrainResult(run, "already finished", run.max_iter, run.max_iter, 0.0)
    begin = start(run)
    cmd = command(run, begin, gpu)
    env = {**os.environ, "GLOG_logtostderr": "1", "GLOG_minloglevel": "0"}
    started = time.monotonic()
    with open(run.log, "ab") as log:
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        log.write(f"{HEADER} {run.name}: {begin.what} at {stamp}: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=run.dir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        stopped = _forward_signals(proc)
        try:
            iteration, last = _follow(run, proc, log, begin.iteration, progress)
        finally:
            proc.wait()
            stopped.restore()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise CaffeTransferError(
            f"caffe train of {run.name} failed (exit {proc.returncode}): {last}; full log: {run.log}")
    if stopped.signal is not None:
        return TrainResult(run, "stopped", begin.iteration, iteration, seconds)
    if not run.finished:
        raise CaffeTransferError(f"caffe train of {run.name} ended without {run.final_model}: see {run.log}")
    return TrainResult(run, "finished", begin.iteration, run.max_iter, seconds)


def _follow(run: Run, proc: subprocess.Popen, log, iteration: int, progress: bool) -> tuple[int, str]:
    """Copy Caffe's output to the log and drive the progress bar; the last iteration and the
    line that best explains a failure (the last fatal one, else the last one)."""
    last, fatal = "(no output)", None
    bar = tqdm(total=run.max_iter, initial=iteration, desc=run.name, unit="it", disable=not progress,
               dynamic_ncols=True, smoothing=0.05)
    postfix: dict[str, str] = {}
    for line in proc.stdout:
        log.write(line)
        log.flush()
        text = line.decode(errors="replace").strip()
        if text:
            last = text
            if text.startswith("F") or "Check failed" in text:
                fatal = fatal or text
        at, loss, output, value = logs.read_line(line)
        if at is not None and at > iteration:
            bar.update(at - iteration)
            iteration = at
        if loss is not None:
            postfix["loss"] = f"{loss:.3f}"
        if output == logs.ACCURACY:
            postfix["val acc"] = f"{value:.4f}"
        if loss is not None or output == logs.ACCURACY:
            bar.set_postfix(postfix, refresh=False)
    bar.close()
    return iteration, fatal or last


class _Forwarder:
    """SIGINT and SIGTERM handlers that pass SIGINT on to Caffe, so that it snapshots and stops."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.signal, self.saved = proc, None, {}

    def __call__(self, signum, frame) -> None:
        self.signal = signum
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def restore(self) -> None:
        for signum, handler in self.saved.items():
            signal.signal(signum, handler)


def _forward_signals(proc: subprocess.Popen) -> _Forwarder:
    forwarder = _Forwarder(proc)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            forwarder.saved[signum] = signal.signal(signum, forwarder)
    return forwarder
