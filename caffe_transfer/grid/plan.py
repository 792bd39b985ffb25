"""A plan: the run folders of a chosen part of the grid, their dependency graph and its cost.

Each transfer run depends on exactly one base run (the base's final snapshot is the hand-off);
bases, the random-frozen nets, the full net and the reduced nets depend on nothing. `plan.json`
in the plan folder lists the runs with their base; `run-all`, `status` and the SLURM scripts read
it, with how the plan shares its GPUs (`packing.Packing`). The estimate simulates the same greedy
order `run-all` uses (most-depended-on first, up to nets_per_gpu runs per GPU) with a time per
iteration per run: one figure, or each net's price from the GPU check's rates.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Callable, Hashable, TypeVar

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.common.version import __version__
from caffe_transfer.data.splits import SPLIT_IDS
from caffe_transfer.grid.packing import Packing
from caffe_transfer.model.solvers import solver_values
from caffe_transfer.model.treatments import Kind, Treatment, authors_grid, parse
from caffe_transfer.runs import logs
from caffe_transfer.runs.folder import Run, State
from caffe_transfer.runs.gen import GenOptions, write_runs

T = TypeVar("T")
PLAN = "plan.json"
EXPERIMENTS = ("random", "natman", "nolearn", "reduced", "netbase")


def experiment(t: Treatment) -> str:
    """Which of the authors' experiments a net belongs to."""
    if t.kind in (Kind.BASE, Kind.TRANSFER):
        return "natman" if t.split == "natman" else "random"
    return {Kind.RANDOM: "nolearn", Kind.REDUCED: "reduced", Kind.FULL: "netbase"}[t.kind]


def select(experiments: list[str] | None = None, splits: list[str] | None = None) -> list[Treatment]:
    """The authors' nets of the chosen experiments (default all) and random splits (default 0..3)."""
    experiments = list(EXPERIMENTS) if not experiments or experiments == ["all"] else experiments
    bad = [e for e in experiments if e not in EXPERIMENTS]
    if bad:
        raise CaffeTransferError(f"unknown experiment {bad[0]!r}: expected all or some of {', '.join(EXPERIMENTS)}")
    splits = splits or [s for s in SPLIT_IDS if s != "natman"]
    bad = [s for s in splits if s not in SPLIT_IDS or s == "natman"]
    if bad:
        raise CaffeTransferError(f"unknown split {bad[0]!r}: expected some of 0, 1, 2, 3")
    return [t for t in authors_grid() if experiment(t) in experiments
            and (experiment(t) != "random" or t.split in splits)]


@dataclass(frozen=True)
class PlanRun:
    name: str
    base: str | None
    max_iter: int


def plan_runs(treatments: list[Treatment], solver: dict | None = None) -> list[PlanRun]:
    names = {t.name for t in treatments}
    runs = []
    for t in treatments:
        base = t.base.name if t.base else None
        if base and base not in names:
            raise CaffeTransferError(f"{t.name} needs its base {base}, which is not in the plan")
        runs.append(PlanRun(t.name, base, solver_values(t.schedule, solver)["max_iter"]))
    return runs


def priority_order(runs: list[T], name: Callable[[T], Hashable] = attrgetter("name"),
                   base: Callable[[T], Hashable | None] = attrgetter("base")) -> list[T]:
    """Most-depended-on first (the least slack): bases before everything that waits for them.
    The one rule for run-all, the estimate and the SLURM arrays; `name` and `base` say how to
    read a run and its base from whatever the caller holds."""
    dependants = Counter(base(r) for r in runs)
    return sorted(runs, key=lambda r: -dependants[name(r)])


def critical_path(runs: list[PlanRun]) -> list[str]:
    """The longest chain of runs, in iterations (a base and its longest transfer)."""
    by_name = {r.name: r for r in runs}
    longest = max(runs, key=lambda r: r.max_iter + (by_name[r.base].max_iter if r.base else 0))
    return [longest.base, longest.name] if longest.base else [longest.name]


def estimate(runs: list[PlanRun], iter_seconds: float | Callable[[PlanRun], float], devices: int,
             nets_per_gpu: int = 1) -> dict:
    """GPU-hours and wall-clock hours on `devices` GPUs, each training up to `nets_per_gpu` runs
    at once. `iter_seconds` is GPU time per iteration of a run (one figure, or each run's price):
    the GPU's time shared out, so N runs at once each take N times as long in wall-clock."""
    price = iter_seconds if callable(iter_seconds) else (lambda run: iter_seconds)
    seconds = {r.name: r.max_iter * price(r) for r in runs}
    if devices < 1 or nets_per_gpu < 1 or not all(s > 0 for s in seconds.values()):
        raise CaffeTransferError(f"estimate needs --iter-seconds > 0, --gpus >= 1 and --nets-per-gpu >= 1 "
                                 f"(got {'priced runs' if callable(iter_seconds) else iter_seconds}, {devices}, "
                                 f"{nets_per_gpu})")
    held = {name: s * nets_per_gpu for name, s in seconds.items()}  # wall-clock a run holds its slot
    done: dict[str, float] = {}
    pending = priority_order(runs)
    free = [0.0] * (devices * nets_per_gpu)
    heapq.heapify(free)
    while pending:
        now = heapq.heappop(free)
        ready = [r for r in pending if r.base is None or (r.base in done and done[r.base] <= now)]
        if not ready:  # wait for the earliest base to finish
            now = min(done[r.base] for r in pending if r.base in done and done[r.base] > now)
            heapq.heappush(free, now)
            continue
        run = ready[0]
        pending.remove(run)
        done[run.name] = now + held[run.name]
        heapq.heappush(free, done[run.name])
    gpu_seconds = sum(seconds.values())
    return {"iter_seconds": gpu_seconds / sum(r.max_iter for r in runs), "gpus": devices,
            "nets_per_gpu": nets_per_gpu, "gpu_hours": gpu_seconds / 3600, "wall_hours": max(done.values()) / 3600,
            "critical_path_hours": sum(held[n] for n in critical_path(runs)) / 3600}


def write_plan(out: str | Path, treatments: list[Treatment], options: GenOptions, force: bool = False,
               packing: Packing = Packing()) -> Path:
    """Run folders for `treatments` under `out` (as `gen` writes them) and `out/plan.json`."""
    out = Path(out)
    runs = plan_runs(treatments, options.solver)
    write_runs({out / t.name: t for t in treatments}, options, force=force)
    plan = {"generator": f"caffe-transfer {__version__}",
            "runs": [{"name": r.name, "base": r.base, "max_iter": r.max_iter} for r in runs],
            "critical_path": critical_path(runs),
            "packing": {"nets_per_gpu": packing.nets_per_gpu, "data_threads": packing.data_threads}}
    write_atomic(out / PLAN, json.dumps(plan, indent=2) + "\n")
    return out / PLAN


def read_plan(plan_dir: str | Path) -> list[PlanRun]:
    path = Path(plan_dir) / PLAN
    if not path.is_file():
        raise CaffeTransferError(f"{plan_dir} has no {PLAN}: write one with caffe-transfer plan --out {plan_dir}")
    try:
        runs = [PlanRun(r["name"], r["base"], int(r["max_iter"])) for r in json.loads(path.read_text())["runs"]]
    except (ValueError, KeyError, TypeError) as e:
        raise CaffeTransferError(f"{path}: not a plan written by caffe-transfer plan ({e})") from None
    for r in runs:
        parse(r.name)
    return runs


def read_packing(plan_dir: str | Path) -> Packing:
    """How the plan shares its GPUs; a plan written before packing existed: one net per GPU."""
    path = Path(plan_dir) / PLAN
    try:
        return Packing(**json.loads(path.read_text()).get("packing", {}))
    except (ValueError, TypeError, AttributeError, CaffeTransferError) as e:
        raise CaffeTransferError(f"{path}: not a plan written by caffe-transfer plan ({e})") from None


def states(plan_dir: str | Path) -> list[dict]:
    """Each run of a plan with its state (as its run folder says) and detail, its iteration and
    latest val accuracy, and its score once done."""
    plan_dir = Path(plan_dir)
    rows = []
    for r in read_plan(plan_dir):
        run = Run.load(plan_dir / r.name)
        tables = logs.read_run(run.dir, train=False) if run.log.is_file() else logs.LogTables()
        acc = tables.accuracies()
        state, detail = run.state()
        rows.append({"name": r.name, "base": r.base, "max_iter": r.max_iter, "iteration": tables.last_iteration,
                     "accuracy": acc[-1] if acc else None, "state": state, "detail": detail,
                     "score": logs.score(acc) if state is State.DONE else None})
    return rows
