"""`caffe-transfer plan` as one call: the run folders and plan.json of a selection of the grid,
its SLURM job arrays when asked, and its cost when a time per iteration or the GPU check's rates
are given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from caffe_transfer.grid.packing import Packing
from caffe_transfer.grid.plan import (
    PlanRun,
    critical_path,
    estimate,
    read_plan,
    select,
    write_plan,
)
from caffe_transfer.grid.rates import Rates, price
from caffe_transfer.grid.slurm import write_slurm
from caffe_transfer.runs.gen import GenOptions


@dataclass
class PlanSummary:
    """What a plan holds, for the user: its runs and graph, and where its scripts are."""

    path: Path
    runs: list[PlanRun]
    critical_path: list[str]
    packing: Packing = Packing()
    submit: Path | None = None  # SLURM's submit.sh, when asked for
    cost: dict | None = None  # `plan.estimate`'s figures, when a time per iteration or rates were given
    rates: Rates | None = None  # what priced the runs, when the GPU check's rates did

    @property
    def bases(self) -> int:
        """Runs of the plan that other runs depend on."""
        bases = {r.base for r in self.runs}
        return sum(1 for r in self.runs if r.name in bases)

    @property
    def transfers(self) -> int:
        return sum(1 for r in self.runs if r.base)

    @property
    def iterations(self) -> int:
        return sum(r.max_iter for r in self.runs)


def make_plan(out: str | Path, experiments: list[str] | None, splits: list[str] | None, options: GenOptions,
              force: bool = False, slurm: dict | None = None, cost: dict | None = None,
              packing: Packing = Packing()) -> PlanSummary:
    """Write the plan; `slurm` holds `write_slurm`'s cpus, grace and sbatch_args, `cost` the
    gpus of the estimate and its iter_seconds or rates. Rates that cannot price this plan are
    refused before anything is written."""
    treatments = select(experiments, splits)
    rates = cost.get("rates") if cost else None
    priced = None
    if rates:
        priced = price(rates, options.arch, treatments, cost["gpus"], packing.nets_per_gpu, options.solver)
    path = write_plan(out, treatments, options, force=force, packing=packing)
    runs = read_plan(out)
    summary = PlanSummary(path, runs, critical_path(runs), packing, rates=rates)
    if slurm is not None:
        summary.submit = write_slurm(out, runs, gpu=options.gpu, packing=packing, **slurm)
    if cost is not None:
        summary.cost = priced or estimate(runs, cost["iter_seconds"], cost["gpus"], packing.nets_per_gpu)
    return summary
