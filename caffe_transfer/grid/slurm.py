"""SLURM job arrays for a plan: the runs without a base first, then each base's transfers.

`PLAN/slurm/first.sbatch` is one job array over every run that needs no base (the bases, the
random-frozen nets, the full and reduced nets). Each base with dependants gets its own array,
`after_<base>.sbatch`, submitted by `submit.sh` with `--dependency=afterok:<first>_<task>` on that
base's task alone, so transfers start as soon as their own base is done. A task runs
`caffe-transfer train` on its run; on SIGTERM (the time limit's `--signal=B:TERM@GRACE`, or
`scancel --signal=TERM --batch`) Caffe snapshots, and the task requeues itself to resume.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.version import __version__
from caffe_transfer.grid.plan import PlanRun, priority_order
from caffe_transfer.runs.folder import STOPPED_EXIT
from caffe_transfer.runs.gen import jinja_environment

FOLDER = "slurm"


def trainer() -> str:
    """The caffe-transfer executable the jobs run (the one beside this Python, else on PATH)."""
    beside = Path(sys.executable).parent / "caffe-transfer"
    return str(beside) if beside.is_file() else (shutil.which("caffe-transfer") or "caffe-transfer")


def write_slurm(plan_dir: str | Path, runs: list[PlanRun], gpu: bool, cpus: int = 1, grace: int = 120,
                sbatch_args: tuple[str, ...] = ()) -> Path:
    """Write the job-array scripts and submit.sh under PLAN/slurm; returns submit.sh. A path or
    argument that could leave its line (a newline in PLAN) is refused before anything is written."""
    plan_dir = Path(plan_dir).resolve()
    folder = plan_dir / FOLDER
    env = jinja_environment()
    array = env.get_template("slurm_array.sbatch.j2")
    common = {"version": __version__, "plan_dir": plan_dir, "logs": folder / "logs", "gpu": gpu, "cpus": cpus,
              "grace": grace, "sbatch_args": sbatch_args, "trainer": trainer(),
              "stopped_exit": STOPPED_EXIT}
    first = [r.name for r in priority_order(runs) if r.base is None]
    scripts = {"first.sbatch": array.render(name="ct-first", runs=first, description="runs without a base",
                                            **common)}
    groups = []
    for index, base in enumerate(first):
        transfers = [r.name for r in runs if r.base == base]
        if not transfers:
            continue
        script = f"after_{base}.sbatch"
        scripts[script] = array.render(name=f"ct-{base}", runs=transfers,
                                       description=f"transfers from {base}", **common)
        groups.append({"script": script, "after": index, "base": base, "runs": transfers})
    scripts["submit.sh"] = env.get_template("submit.sh.j2").render(
        first={"script": "first.sbatch", "runs": first}, groups=groups, **common)
    (folder / "logs").mkdir(parents=True, exist_ok=True)  # once every script rendered (see common.shell)
    for name, text in scripts.items():
        write_atomic(folder / name, text, mode=0o777)
    return folder / "submit.sh"
