"""SLURM job arrays for a plan: the runs without a base first, then each base's transfers.

`PLAN/slurm/first.sbatch` is one job array over every run that needs no base (the bases, the
random-frozen nets, the full and reduced nets). Each base with dependants gets its own array,
`after_<base>.sbatch`, submitted by `submit.sh` with `--dependency=afterok:<first>_<task>` on the
task that trains that base, so transfers start as soon as their own base is done. A task trains
up to nets_per_gpu runs of one array (one dependency level) at once on its one GPU, each its own
`caffe-transfer train`; on SIGTERM (the time limit's `--signal=B:TERM@GRACE`, or
`scancel --signal=TERM --batch`) each Caffe snapshots, and the task requeues itself: its finished
runs are then no-ops of `train`, its stopped ones resume.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.version import __version__
from caffe_transfer.grid.packing import Packing, pack
from caffe_transfer.grid.plan import PlanRun, priority_order
from caffe_transfer.runs.folder import KILLED_STATUSES, STOPPED_EXIT
from caffe_transfer.runs.gen import jinja_environment

FOLDER = "slurm"
FIRST = "first.sbatch"


@dataclass(frozen=True)
class JobArray:
    """One sbatch script: its tasks (the runs each trains at once on one GPU), and for a base's
    transfers the base and the task of the first array that trains it."""

    script: str
    tasks: list[list[str]]
    base: str | None = None
    after: int | None = None

    @property
    def runs(self) -> list[str]:
        return [name for task in self.tasks for name in task]


def job_arrays(runs: list[PlanRun], nets_per_gpu: int = 1) -> list[JobArray]:
    """The plan's runs mapped to array tasks, up to `nets_per_gpu` runs of one dependency level
    per task (one GPU), in `priority_order`: the first array, then one per base with dependants."""
    first = pack([r.name for r in priority_order(runs) if r.base is None], nets_per_gpu)
    arrays = [JobArray(FIRST, first)]
    for index, task in enumerate(first):
        for base in task:
            transfers = [r.name for r in priority_order(runs) if r.base == base]
            if transfers:
                arrays.append(JobArray(f"after_{base}.sbatch", pack(transfers, nets_per_gpu), base, index))
    return arrays


def trainer() -> str:
    """The caffe-transfer executable the jobs run (the one beside this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "caffe-transfer"
    return str(beside) if beside.is_file() else (shutil.which("caffe-transfer") or "caffe-transfer")


def write_slurm(plan_dir: str | Path, runs: list[PlanRun], gpu: bool, cpus: int | None = None, grace: int = 120,
                sbatch_args: tuple[str, ...] = (), packing: Packing = Packing()) -> Path:
    """Write the job-array scripts and submit.sh under PLAN/slurm; returns submit.sh. `cpus` per
    task defaults to what its runs need (`Packing.task_cpus`). A path or argument that could
    leave its line (a newline in PLAN) is refused before anything is written."""
    plan_dir = Path(plan_dir).resolve()
    folder = plan_dir / FOLDER
    env = jinja_environment()
    array = env.get_template("slurm_array.sbatch.j2")
    per_task = packing.nets_per_gpu
    cpus = cpus or packing.task_cpus(gpu)
    common = {"version": __version__, "plan_dir": plan_dir, "logs": folder / "logs", "gpu": gpu, "cpus": cpus,
              "grace": grace, "sbatch_args": sbatch_args, "trainer": trainer(), "stopped_exit": STOPPED_EXIT,
              "killed_by": KILLED_STATUSES, "blas_threads": packing.blas_threads(gpu, cpus, per_task),
              "environment": packing.environment(gpu, cpus, per_task), "per_task": per_task}
    arrays = job_arrays(runs, per_task)
    scripts = {}
    for a in arrays:
        name, description = ((f"ct-{a.base}", f"transfers from {a.base}") if a.base
                             else ("ct-first", "runs without a base"))
        scripts[a.script] = array.render(name=name, tasks=a.tasks, description=description, **common)
    scripts["submit.sh"] = env.get_template("submit.sh.j2").render(first=arrays[0], groups=arrays[1:], **common)
    (folder / "logs").mkdir(parents=True, exist_ok=True)  # once every script rendered (see common.shell)
    for name, text in scripts.items():
        write_atomic(folder / name, text, mode=0o777)
    return folder / "submit.sh"
