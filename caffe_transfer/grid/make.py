"""`caffe-transfer plan` as one call: the run folders and plan.json of a selection of the grid,
its SLURM job arrays when asked, and its cost when a time per iteration is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from caffe_transfer.grid.plan import (
    PlanRun,
    critical_path,
    estimate,
    read_plan,
    select,
    write_plan,
)
from caffe_transfer.grid.slurm import write_slurm
from caffe_transfer.runs.gen import GenOptions


@dataclass
class PlanSummary:
    """What a plan holds, for the user: its runs and graph, and where its scripts are."""

    path: Path
    runs: list[PlanRun]
    critical_path: list[str]
    submit: Path | None = None  # SLURM's submit.sh, when asked for
    cost: dict | None = None  # `plan.estimate`'s figures, when a time per iteration was given

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
              force: bool = False, slurm: dict | None = None, cost: dict | None = None) -> PlanSummary:
    """Write the plan; `slurm` holds `write_slurm`'s cpus, grace and sbatch_args, `cost` the
    iter_seconds and gpus of the estimate."""
    path = write_plan(out, select(experiments, splits), options, force=force)
    runs = read_plan(out)
    summary = PlanSummary(path, runs, critical_path(runs))
    if slurm is not None:
        summary.submit = write_slurm(out, runs, gpu=options.gpu, **slurm)
    if cost is not None:
        summary.cost = estimate(runs, cost["iter_seconds"], cost["gpus"])
    return summary
