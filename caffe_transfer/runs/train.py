"""Running the real `caffe train` on a run folder: start, resume, stop without losing work.

The run folder (`folder.py`) says where a session begins: from its newest snapshot (never
`-snapshot` with `-weights`, which Caffe refuses), else from the weights `transplant` wrote
(transfers and random-frozen nets; made on the spot when missing, and made again when they were
made for another version of the folder or from a base that changed since, with a note saying
so), else from the filler init. Snapshots of another version, snapshots on disk that train.log
does not record, and a transfer's snapshots trained from a base that has changed since, are
refused; a newest snapshot that is cut short or cannot be read is passed over, with a note.
The trainer holds the folder's lock and hands it to Caffe, which runs in the run folder in a
process group of its own, its log appended to `train.log` line by line, with a progress bar of
iteration, loss, latest val accuracy and time left. SIGINT, SIGTERM or SIGHUP to the trainer (or to its process group, which Caffe is not in)
becomes Caffe's own SIGINT, on which it snapshots and stops; a SIGKILL of the trainer takes Caffe
with it, and the next start resumes from the last snapshot.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from caffe_transfer.common.caffe_env import cuda_build, data_threads, tool
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.common.progress import progress as progress_bar
from caffe_transfer.model.treatments import Kind
from caffe_transfer.runs import cudnn, logs
from caffe_transfer.runs.folder import INIT, KILLED_BY, SESSION, SIGNALS, Run, State
from caffe_transfer.runs.lock import Lock

BY = "caffe-transfer train"
HEADER = SESSION + BY  # starts the line written before each session in train.log
STOPPED_EARLY = "Optimization stopped early."  # Caffe, after a SIGINT and its snapshot
_PR_SET_PDEATHSIG = 1


@dataclass
class Start:
    """How a session of `caffe train` begins."""

    args: list[str]   # arguments after `caffe train -solver solver.prototxt`
    iteration: int
    what: str         # for the log and the user
    note: str = ""    # what the user should know before it starts (an init made again, and why)


@dataclass
class TrainResult:
    run: Run
    state: State      # DONE, or STOPPED (by a signal, with a snapshot)
    start: int
    iteration: int    # where it ended: max_iter, or the iteration of the snapshot it stopped with
    seconds: float

    @property
    def already_done(self) -> bool:
        return self.state is State.DONE and self.start == self.iteration


def start(run: Run) -> Start:
    """Where the next session of `run` begins; makes the transplant a transfer needs first.
    The caller holds the run folder."""
    resume = run.resume_state()
    problem = run.stale(resume) or run.unrecorded(resume) or run.base_changed(resume)
    if problem:
        raise CaffeTransferError(problem)
    run.snapshot(0).parent.mkdir(parents=True, exist_ok=True)  # Caffe writes there, and makes no folder
    written = run.snapshots()
    passed = f"{run.name}: {written[-1].state.name} or its .caffemodel is cut short or unreadable: passed over" \
        if written and written[-1] != resume else ""
    if resume:
        return Start(["-snapshot", str(resume.state.relative_to(run.dir))], resume.iteration,
                     f"resuming from {resume.state.name}", passed)
    if run.treatment.kind in (Kind.TRANSFER, Kind.RANDOM):
        if replaced := run.init_replaced():
            raise CaffeTransferError(replaced)
        problem = run.init_problem()
        note = passed
        if problem:
            from caffe_transfer.runs.transplant import make_init

            make_init(run, None, run.init_weights, None)
            if problem != f"no {INIT}":
                note = "; ".join(filter(None, (note, f"{run.name}: {problem}: transplanted again")))
        return Start(["-weights", run.init_weights.name], 0, f"starting from {run.init_weights.name}", note)
    return Start([], 0, "starting from the filler init", passed)


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
          environment: dict[str, str] | None = None, on_iteration: Callable[[int], object] | None = None,
          on_start: Callable[[subprocess.Popen], None] | None = None,
          on_end: Callable[[subprocess.Popen], None] | None = None,
          on_note: Callable[[str], object] | None = None) -> TrainResult:
    """Train (or resume) the run in `run_dir` to its max_iter with the real `caffe train`.

    `threads` sets OPENBLAS_NUM_THREADS for Caffe, `environment` adds variables (a scheduler's
    CAFFE_DATA_THREADS); `on_iteration` receives the iterations done
    (first those done before this session); `on_start`/`on_end` see the Caffe process (a scheduler
    uses them to stop many runs at once); `on_note` gets what the user should know before it starts."""
    data_threads()  # a bad CAFFE_DATA_THREADS is refused here, not by Caffe mid-queue
    run = Run.load(run_dir)
    count = on_iteration or (lambda delta: None)
    with run.lock(BY) as lock:
        if run.finished:
            count(run.max_iter)
            return TrainResult(run, State.DONE, run.max_iter, run.max_iter, 0.0)
        begin = start(run)
        if begin.note and on_note:
            on_note(begin.note)
        cmd = command(run, begin, gpu)
        env = {**os.environ, **(environment or {}), "GLOG_logtostderr": "1", "GLOG_minloglevel": "0",
               **cudnn.environment(run.description.get("cudnn"))}
        if threads:
            env["OPENBLAS_NUM_THREADS"] = str(threads)
        count(begin.iteration)
        run.write_status(State.RUNNING, pid=os.getpid(), host=socket.gethostname(), iteration=begin.iteration)
        try:
            result = _session(run, begin, cmd, env, lock, progress, count, on_start, on_end)
        except CaffeTransferError as e:
            run.write_status(State.FAILED, error=str(e))
            raise
        except BaseException:
            run.write_status(State.STOPPED, error="the trainer was interrupted")
            raise
        run.write_status(result.state, iteration=result.iteration)
        return result


def _session(run: Run, begin: Start, cmd: list[str], env: dict, lock: Lock, progress: bool, count, on_start,
             on_end) -> TrainResult:
    """One `caffe train` process, from start to exit; it inherits the folder's lock."""
    started = time.monotonic()
    with open(run.log, "a+b") as log:
        _end_line(log)
        what = f"{begin.what}{' (' + begin.note + ')' if begin.note else ''}"
        log.write(f"{run.session_line(BY, what, ' '.join(cmd))}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=run.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, pass_fds=(lock.fileno(),), preexec_fn=_die_with_parent)
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
    killed = -proc.returncode in KILLED_BY  # not a crash: stopped, it resumes from its last snapshot
    if proc.returncode != 0 and not killed:
        raise CaffeTransferError(
            f"caffe train of {run.name} failed (exit {proc.returncode}): {session.last}; full log: {run.log}")
    if session.stopped_early or killed:
        snap = run.resume_state()  # the snapshot Caffe wrote on the signal (its name, not the log, says where)
        return TrainResult(run, State.STOPPED, begin.iteration, snap.iteration if snap else 0, seconds)
    if not run.finished:
        raise CaffeTransferError(f"caffe train of {run.name} ended without {run.final_model}: see {run.log}")
    return TrainResult(run, State.DONE, begin.iteration, run.max_iter, seconds)


def _end_line(log) -> None:
    """End the last line of a log cut mid-line, so the session header starts a line of its own
    (else it is not read as one, and the snapshots of its session have no fingerprint)."""
    if log.seek(0, os.SEEK_END):
        log.seek(-1, os.SEEK_END)
        if log.read(1) != b"\n":
            log.write(b"\n")


@dataclass
class _Session:
    iteration: int
    last: str = "(no output)"    # the line that best explains a failure
    fatal: str = ""              # Caffe's first fatal line (a failed check), if any
    stopped_early: bool = False  # Caffe stopped on a signal, after its snapshot


def _follow(run: Run, proc: subprocess.Popen, log, iteration: int, progress: bool,
            count: Callable[[int], object]) -> _Session:
    """Copy Caffe's output to the log and drive the progress bar and `count`."""
    session = _Session(iteration)
    bar = progress_bar(run.max_iter, run.name, initial=iteration, enabled=progress)
    postfix: dict[str, str] = {}
    for line in proc.stdout:
        log.write(line)
        log.flush()
        text = line.decode(errors="replace").strip()
        if text:
            session.last = text
            if text.startswith("F") or "Check failed" in text:
                session.fatal = session.fatal or text
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
    session.last = session.fatal or session.last
    return session


class _Forwarder:
    """Handlers of SIGNALS that pass SIGINT on to Caffe, so that it snapshots and stops."""

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
        for signum in SIGNALS:
            forwarder.saved[signum] = signal.signal(signum, forwarder)
    return forwarder
