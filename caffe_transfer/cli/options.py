"""Options shared by several commands, in groups: each group is shown under its own heading in
--help and reaches the command as one value (a GenOptions, a dict), not as loose parameters."""

from __future__ import annotations

import functools
from typing import Callable

import click

from caffe_transfer.cli.types import (
    CommaList,
    CudnnSwitch,
    FcOutputs,
    PositiveFloat,
    RatesFile,
    ScriptLine,
    SolverOverride,
    out_dir,
)
from caffe_transfer.common.caffe_env import DATA_THREADS_AUTO, DATA_THREADS_MAX
from caffe_transfer.grid.packing import Packing
from caffe_transfer.model.architectures import ARCHITECTURES
from caffe_transfer.model.treatments import N_TRANSFERABLE, SPLIT_IDS


class GroupedOption(click.Option):
    """An option that --help lists under its group's title."""

    def __init__(self, *args, group: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """--help lists the options of each group under the group's title."""

    def format_options(self, ctx, formatter) -> None:
        sections: dict[str | None, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record:
                sections.setdefault(getattr(param, "group", None), []).append(record)
        for title, rows in sections.items():
            with formatter.section(title or "Options"):
                formatter.write_dl(rows)


def option_group(title: str, dest: str, options: list[tuple[tuple, dict]], build: Callable):
    """Decorator: `options` (click.option's arguments) under `title`, passed to the command as
    `dest` = build(**their values)."""

    def decorate(f):
        params = [GroupedOption(decls, group=title, **kw) for decls, kw in options]

        @functools.wraps(f)
        def command(*args, **kwargs):
            kwargs[dest] = build(**{p.name: kwargs.pop(p.name) for p in params})
            return f(*args, **kwargs)

        command.__dict__.setdefault("__click_params__", []).extend(reversed(params))
        return command

    return decorate


def treatment_options(f):
    f = click.option("--split", type=click.Choice(SPLIT_IDS), help="Split: 0..3 (random halves) or natman.")(f)
    f = click.option("--n", "n", type=click.IntRange(1, N_TRANSFERABLE),
                     help=f"Number of transferred (or frozen) layers, 1..{N_TRANSFERABLE}.")(f)
    return f


def _gen_options(arch, data_root, backend, fc8_outputs, cpu, engine, cudnn, solver):
    from caffe_transfer.runs.gen import GenOptions

    return GenOptions(arch=arch, data_root=data_root, backend=backend, fc8_outputs=fc8_outputs, gpu=not cpu,
                      engine=engine, cudnn=dict(cudnn), solver=dict(solver))


net_options = option_group("Nets and solver", "options", [
    (("--arch",), dict(default="caffenet", show_default=True, type=click.Choice(ARCHITECTURES),
                       help="Architecture.")),
    (("--data-root",), dict(default="data", show_default=True, type=out_dir(),
                            help="Folder with one subfolder per dataset (half0A_train/lmdb, .../mean.binaryproto).")),
    (("--backend",), dict(default="lmdb", show_default=True, type=click.Choice(["lmdb", "leveldb"]),
                          help="Database backend: lmdb, the only one make-lmdb writes and this Caffe reads "
                          "(leveldb is refused, with the reason).")),
    (("--fc8-outputs",), dict(type=FcOutputs(), help="fc8 width: a number, or 'classes' for the paper's N-way "
                              "head (default: 1000 for caffenet, as in every released net; classes for small).")),
    (("--cpu",), dict(is_flag=True, help="solver_mode CPU instead of GPU.")),
    (("--engine",), dict(type=click.Choice(["caffe", "cudnn"]),
                         help="Engine of every layer that has one: caffe (Caffe's own code, the 2014 numerics) or "
                         "cudnn (faster, not bit-deterministic). Default: Caffe's (cuDNN in a cuDNN build).")),
    (("--cudnn",), dict(multiple=True, type=CudnnSwitch(),
                        help="A cuDNN build's switch for this run's Caffe, recorded in treatment.json: workspace_mb=N "
                        "(MiB per layer, default 8), algo=heuristic|measure, deterministic=0|1, tf32=0|1 (repeatable; "
                        "docs/gpu.md).")),
    (("--solver",), dict(multiple=True, type=SolverOverride(),
                         help="Override a solver value, e.g. --solver max_iter=1000 (repeatable).")),
], _gen_options)


def _slurm(scheduler, cpus_per_task, grace, sbatch_args) -> dict | None:
    if scheduler != "slurm":
        return None
    return {"cpus": cpus_per_task, "grace": grace, "sbatch_args": sbatch_args}


slurm_options = option_group("SLURM", "slurm", [
    (("--scheduler",), dict(type=click.Choice(["none", "slurm"]), default="none", show_default=True,
                            help="slurm: also write job arrays and submit.sh under OUT/slurm.")),
    (("--cpus-per-task",), dict(type=click.IntRange(min=1),
                                help="CPUs per array task, shared by its runs (default: a GPU plan "
                                "nets-per-gpu x (data-threads + 1), a CPU plan one per run).")),
    (("--grace",), dict(type=click.IntRange(0, 65535), default=120, show_default=True,
                        help="Seconds before the time limit at which a run snapshots and requeues.")),
    (("--sbatch-arg", "sbatch_args"), dict(multiple=True, type=ScriptLine(),
                                           help="An extra #SBATCH line, e.g. --sbatch-arg=--partition=gpu (repeatable).")),
], _slurm)


def _estimate(iter_seconds, rates, gpu_count) -> dict | None:
    if iter_seconds and rates:
        raise click.UsageError("give --iter-seconds or --rates, not both")
    return {"iter_seconds": iter_seconds, "rates": rates, "gpus": gpu_count} if iter_seconds or rates else None


estimate_options = option_group("Cost estimate", "estimate", [
    (("--iter-seconds",), dict(type=PositiveFloat(),
                               help="GPU seconds per iteration of every run (at --nets-per-gpu N: the "
                               "aggregate, N runs' time per iteration / N): print GPU-hours and wall-clock time.")),
    (("--rates",), dict(type=RatesFile(), help="The GPU check's gpu_check.json: price each net by its kind's "
                        "measured rate and the packing, and print GPU-hours and wall-clock time.")),
    (("--gpus", "gpu_count"), dict(type=click.IntRange(min=1), default=1, show_default=True,
                                   help="GPUs for the wall-clock estimate.")),
], _estimate)


packing_options = option_group("Sharing each GPU", "packing", [
    (("--nets-per-gpu",), dict(type=click.IntRange(min=1), default=1, show_default=True,
                               help="Runs trained at once on each GPU, each its own Caffe (recorded in the "
                               "plan: run-all, SLURM and the estimate use it; docs/gpu.md: choosing N).")),
    (("--data-threads",), dict(type=click.IntRange(0, DATA_THREADS_MAX), default=DATA_THREADS_AUTO,
                               show_default=True,
                               help="CAFFE_DATA_THREADS of each GPU run: the DataLayer's transform threads "
                               "(0: stock Caffe's one thread); sizes SLURM's --cpus-per-task.")),
], Packing)


def experiment_options(f):
    from caffe_transfer.grid.plan import EXPERIMENTS

    f = click.option("--splits", type=CommaList(("0", "1", "2", "3")), default="0,1,2,3", show_default=True,
                     help="Random splits of the random experiment.")(f)
    f = click.option("--experiments", type=CommaList(("all", *EXPERIMENTS)), default="all", show_default=True,
                     help=f"Comma-separated: {', '.join(EXPERIMENTS)}, or all.")(f)
    return f

