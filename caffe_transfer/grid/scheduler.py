"""Training many run folders at once: bases before their transfers, up to N runs per device.

A transfer run depends on its base run, as plan.json says (the base's final snapshot is the
hand-off). Runs whose base has finished are started most-depended-on first, so
bases never wait behind transfers. Each device (a GPU, or a CPU worker) trains up to
nets_per_gpu runs at once, each its own Caffe; GPU runs get their DataLayer threads as
`packing.Packing` shares the machine's CPUs out. Finished runs are skipped, interrupted ones
resume from their snapshots (`train` does both), a failed run holds back its dependants while
independent runs go on. One progress bar covers the whole set: runs done, the runs in progress, time left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from operator import attrgetter
from pathlib import Path

from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.common.progress import progress as progress_bar
from caffe_transfer.grid.packing import Packing, device_slots
from caffe_transfer.grid.plan import plan_runs, priority_order, read_packing, read_plan
from caffe_transfer.runs.folder import SIGNALS, Run, State
from caffe_transfer.runs.lock import Lock
from caffe_transfer.runs.train import train


@dataclass
class Outcome:
    name: str
    state: State         # done, stopped, failed; waiting (its base did not finish), or where a run
                         # the grid did not start stands
    seconds: float = 0.0
    detail: str = ""


@dataclass
class GridResult:
    outcomes: dict[Path, Outcome] = field(default_factory=dict)
    interrupted: bool = False  # a signal stopped the grid: run it again to continue

    @property
    def trained(self) -> int:
        return sum(o.state is State.DONE for o in self.outcomes.values())

    @property
    def complete(self) -> bool:
        return self.trained == len(self.outcomes)


def dependencies(runs: list[Run], bases: dict[str, str | None] | None = None) -> dict[Path, Path | None]:
    """Each run's base run folder: from `bases` (run name -> base name, as plan.json holds it),
    else from the graph `plan` would write for these runs."""
    if bases is None:
        bases = {r.name: r.base for r in plan_runs([run.treatment for run in runs])}
    folders = {r.name: r.dir for r in runs}
    return {r.dir: folders.get(bases.get(r.name)) for r in runs}


class _Live:
    """The Caffe processes now running, so that one signal can ask all of them to snapshot."""

    def __init__(self):
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def started(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.add(proc)
            if self.stopping:
                proc.send_signal(signal.SIGINT)

    def ended(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.procs.discard(proc)

    def stop(self, signum=None, frame=None) -> None:
        with self.lock:
            self.stopping = True
            for proc in self.procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)


def run_plan(plan_dir: str | Path, workers: int = 1, gpus: list[int] | None = None,
             nets_per_gpu: int | None = None, progress: bool = True) -> GridResult:
    """`run_grid` over every run of a plan, with plan.json's dependency graph and packing
    (`nets_per_gpu` overrides the plan's); one runner per plan at a time (the plan folder's lock,
    as a run folder's), or a line naming the one there is."""
    runs = read_plan(plan_dir)
    packing = read_packing(plan_dir)
    if nets_per_gpu:
        packing = replace(packing, nets_per_gpu=nets_per_gpu)
    with Lock(Path(plan_dir), "caffe-transfer run-all"):
        return run_grid([Path(plan_dir) / r.name for r in runs], workers=workers, gpus=gpus, packing=packing,
                        progress=progress, bases={r.name: r.base for r in runs})


def run_grid(run_dirs: list[str | Path], workers: int = 1, gpus: list[int] | None = None,
             blas_threads: int | None = None, progress: bool = True,
             bases: dict[str, str | None] | None = None, packing: Packing = Packing()) -> GridResult:
    """Train every run to its max_iter on `workers` CPU workers, or on the GPUs in `gpus`, each
    taking up to `packing.nets_per_gpu` runs at once.

    `bases` is the dependency graph (run name -> base name; default: `plan`'s for these runs).
    On the CPU each Caffe gets cores/runs-at-once OpenBLAS threads unless `blas_threads` says; on
    GPUs each gets the DataLayer threads `packing` gives it within the CPUs this process may use."""
    runs = [Run.load(d) for d in run_dirs]
    slots = device_slots(list(gpus) if gpus else [None] * workers, packing.nets_per_gpu)
    if not slots:
        raise CaffeTransferError(f"no workers: expected --workers >= 1 or a GPU list (got {workers})")
    cpus = len(os.sched_getaffinity(0))
    if blas_threads is None:
        blas_threads = packing.blas_threads(bool(gpus), cpus, len(slots))
    environment = packing.environment(bool(gpus), cpus, len(slots))
    after = dependencies(runs, bases)
    pending = priority_order(runs, name=attrgetter("dir"), base=lambda r: after[r.dir])
    result = GridResult()
    total = sum(r.max_iter for r in runs)
    bar = progress_bar(total, "grid", enabled=progress, smoothing=0.02)
    live = _Live()
    saved = {}
    if threading.current_thread() is threading.main_thread():
        saved = {s: signal.signal(s, live.stop) for s in SIGNALS}
    free = list(slots)
    running: dict[Future, tuple[Run, object]] = {}

    def show() -> None:
        done = result.trained
        names = ", ".join(r.name for r, _ in running.values())
        bar.set_postfix_str(f"runs {done}/{len(runs)} done; running {names or '-'}", refresh=True)

    def launch(pool: ThreadPoolExecutor, run: Run) -> None:
        slot = free.pop(0)
        future = pool.submit(train, run.dir, gpu=slot, progress=False, threads=blas_threads,
                             environment=environment, on_iteration=bar.update, on_start=live.started,
                             on_end=live.ended)
        running[future] = (run, slot)

    try:
        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            while pending or running:
                for run in list(pending):
                    base = after[run.dir]
                    if base in result.outcomes and result.outcomes[base].state is not State.DONE:
                        result.outcomes[run.dir] = Outcome(run.name, State.WAITING,
                                                           detail=f"its base {base.name} did not finish")
                        pending.remove(run)
                        bar.update(run.max_iter)
                    elif free and not live.stopping and (base is None or base in result.outcomes):
                        pending.remove(run)
                        launch(pool, run)
                if live.stopping and not running:
                    break
                show()
                if not running:
                    continue
                finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    run, slot = running.pop(future)
                    free.append(slot)
                    result.outcomes[run.dir] = _outcome(run, future)
        if live.stopping:
            result.interrupted = True
            for run in pending:
                result.outcomes[run.dir] = Outcome(run.name, run.state()[0])
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        show()
        bar.close()
    return result


def _outcome(run: Run, future: Future) -> Outcome:
    try:
        r = future.result()
    except CaffeTransferError as e:
        return Outcome(run.name, State.FAILED, detail=str(e))
    return Outcome(run.name, r.state, r.seconds, f"at iteration {r.iteration}" if r.state is State.STOPPED else "")
