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
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from caffe_transfer.common.caffe_env import cuda_build, tool
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.model.treatments import Kind
from caffe_transfer.runs import logs
from caffe_transfer.runs.folder import Run

HEADER = "==> caffe-transfer train"  # starts the line written before each session in train.log
STOPPED_EARLY = "Optimization stopped early."  # Caffe, after a SIGINT and its snapshot
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
            from caffe_transfer.runs.transplant import transplant

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


def train(run_dir: str | Path, gpu: int | None = None, progress: bool = True, threads: int | None = None,
          on_iteration: Callable[[int], object] | None = None,
          on_start: Callable[[subprocess.Popen], None] | None = None,
          on_end: Callable[[subprocess.Popen], None] | None = None) -> TrainResult:
    """Train (or resume) the run in `run_dir` to its max_iter with the real `caffe train`.

    `threads` sets OPENBLAS_NUM_THREADS for Caffe; `on_iteration` receives the iterations done
    (first those done before this session); `on_start`/`on_end` see the Caffe process (a scheduler
    uses them to stop many runs at once)."""
    run = Run.load(run_dir)
    count = on_iteration or (lambda delta: None)
    if run.finished:
        count(run.max_iter)
        return TrainResult(run, "already finished", run.max_iter, run.max_iter, 0.0)
    begin = start(run)
    cmd = command(run, begin, gpu)
    env = {**os.environ, "GLOG_logtostderr": "1", "GLOG_minloglevel": "0"}
    if threads:
        env["OPENBLAS_NUM_THREADS"] = str(threads)
    count(begin.iteration)
    run.write_status("running", pid=os.getpid(), host=socket.gethostname(), iteration=begin.iteration)
    try:
        result = _session(run, begin, cmd, env, progress, count, on_start, on_end)
    except CaffeTransferError as e:
        run.write_status("failed", error=str(e))
        raise
    except BaseException:
        run.write_status("stopped", error="the trainer was interrupted")
        raise
    run.write_status(result.status, iteration=result.iteration)
    return result


def _session(run: Run, begin: Start, cmd: list[str], env: dict, progress: bool, count, on_start,
             on_end) -> TrainResult:
    """One `caffe train` process, from start to exit."""
    started = time.monotonic()
    with open(run.log, "ab") as log:
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        log.write(f"{HEADER} {run.name}: {begin.what} at {stamp}: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=run.dir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        forwarder = _forward_signals(proc)
        if on_start:
            on_start(proc)
        try:
            session = _follow(run, proc, log, begin.iteration, progress, count)
        finally:
            proc.wait()
            forwarder.restore()
            if on_end:
                on_end(proc)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise CaffeTransferError(
            f"caffe train of {run.name} failed (exit {proc.returncode}): {session.last}; full log: {run.log}")
    if session.stopped_early:
        return TrainResult(run, "stopped", begin.iteration, session.iteration, seconds)
    if not run.finished:
        raise CaffeTransferError(f"caffe train of {run.name} ended without {run.final_model}: see {run.log}")
    return TrainResult(run, "finished", begin.iteration, run.max_iter, seconds)


@dataclass
class _Session:
    iteration: int
    last: str = "(no output)"    # the line that best explains a failure
    stopped_early: bool = False  # Caffe stopped on a signal, after its snapshot


def _follow(run: Run, proc: subprocess.Popen, log, iteration: int, progress: bool,
            count: Callable[[int], object]) -> _Session:
    """Copy Caffe's output to the log and drive the progress bar and `count`."""
    session, fatal = _Session(iteration), None
    bar = tqdm(total=run.max_iter, initial=iteration, desc=run.name, unit="it", disable=not progress,
               dynamic_ncols=True, smoothing=0.05)
    postfix: dict[str, str] = {}
    for line in proc.stdout:
        log.write(line)
        log.flush()
        text = line.decode(errors="replace").strip()
        if text:
            session.last = text
            if text.startswith("F") or "Check failed" in text:
                fatal = fatal or text
            session.stopped_early |= text.endswith(STOPPED_EARLY)
        at, loss, output, value = logs.read_line(line)
        if at is not None and at > session.iteration:
            bar.update(at - session.iteration)
            count(at - session.iteration)
            session.iteration = at
        if loss is not None:
            postfix["loss"] = f"{loss:.3f}"
        if output == logs.ACCURACY:
            postfix["val acc"] = f"{value:.4f}"
        if loss is not None or output == logs.ACCURACY:
            bar.set_postfix(postfix, refresh=False)
    bar.close()
    session.last = fatal or session.last
    return session


class _Forwarder:
    """SIGINT and SIGTERM handlers that pass SIGINT on to Caffe, so that it snapshots and stops."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.saved = proc, {}

    def __call__(self, signum, frame) -> None:
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
