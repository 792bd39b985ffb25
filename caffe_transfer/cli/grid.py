"""Grid commands: plans (with SLURM job arrays), training a whole plan, its status, the demo."""

from __future__ import annotations

from pathlib import Path

import click

from caffe_transfer.cli.options import (
    GroupedCommand,
    estimate_options,
    experiment_options,
    net_options,
    packing_options,
    slurm_options,
)
from caffe_transfer.cli.types import GpuList, ScriptPath, existing_dir, out_dir


def report_grid(result, when: str = "") -> None:
    """How many runs of a grid trained, what happened to the others; exit 130 when a signal
    stopped it (run the command again to continue)."""
    from caffe_transfer.runs.folder import STOPPED_EXIT

    click.echo(f"{result.trained}/{len(result.outcomes)} runs trained {when}".rstrip())
    for outcome in result.outcomes.values():
        if outcome.detail:
            click.echo(f"  {outcome.name}: {outcome.state.value} {outcome.detail}")
    if result.interrupted:
        click.echo("stopped; run the same command again to continue")
        raise SystemExit(STOPPED_EXIT)


@click.command()
@click.option("--out", "-o", default="demo", show_default=True, type=out_dir(),
              help="Folder for data, runs and report (run again to continue).")
@click.option("--preset", default="standard", show_default=True, type=click.Choice(["quick", "standard", "long"]),
              help="standard: the grid with repeats, sized for 2 cores (docs/demo.md); quick: a 2-minute "
                   "smoke run that judges nothing; long: more data, converged bases, about an hour on 2 cores.")
@click.option("--workers", type=click.IntRange(min=1), help="Runs trained at once (default: one per core).")
def demo(out, preset, workers) -> None:
    """The scaled-down reproduction on Fashion-MNIST, CPU only: data, grid, training, report.

    Bases, BnB, BnB+, AnB, AnB+ for n = 1..7 on each random split (standard and long also: a
    dissimilar split and the random-frozen nets, repeated by seed), then Figure 2 with the
    spread of the repeats, Table 1 and findings.md in OUT/report."""
    from caffe_transfer.demo import run_demo

    result = run_demo(out, preset, workers=workers)
    report_grid(result.grid, f"in {result.seconds / 60:.1f} min")
    click.echo((result.report / "findings.md").read_text(), nl=False)
    click.echo(f"report: {result.report}/ (figure2.png, table1.csv, findings.md, report.txt)")
    if not result.grid.complete:
        raise SystemExit(1)


@click.command(cls=GroupedCommand)
@experiment_options
@click.option("--out", "-o", required=True, type=ScriptPath(file_okay=False, path_type=Path),
              help="Plan folder (one run folder per net).")
@click.option("--force", is_flag=True, help="Write run folders that hold snapshots (kept: they then refuse "
              "to resume until moved aside) or files gen did not write, or that were edited since.")
@net_options
@packing_options
@slurm_options
@estimate_options
def plan(experiments, splits, out, force, options, packing, slurm, estimate) -> None:
    """Write the run folders of (part of) the grid and plan.json, the dependency graph.

    Prints the number of runs, the critical path and, with --iter-seconds or the GPU check's
    --rates, GPU-hours and wall-clock time on --gpus GPUs at --nets-per-gpu runs per GPU."""
    from caffe_transfer.grid.make import make_plan

    p = make_plan(out, experiments, splits, options, force=force, slurm=slurm, cost=estimate, packing=packing)
    click.echo(f"wrote {len(p.runs)} run folders and {p.path}: {p.bases} bases with dependants, "
               f"{p.transfers} transfers, {p.iterations:,} iterations in all")
    click.echo(f"critical path: {' -> '.join(p.critical_path)}")
    if p.submit:
        click.echo(f"wrote SLURM job arrays ({p.packing.nets_per_gpu} run(s) per task); submit them with {p.submit}")
    if p.cost:
        e = p.cost
        priced = (f"priced by {p.rates.path} ({p.rates.device} at CAFFE_DATA_THREADS={p.rates.data_threads}, "
                  f"{e['iter_seconds']:.4f} GPU-s/iteration on average)" if p.rates
                  else f"at {e['iter_seconds']} s/iteration")
        click.echo(f"{priced}, {e['nets_per_gpu']} run(s) per GPU: {e['gpu_hours']:,.0f} GPU-hours "
                   f"({e['gpu_hours'] / 24:,.1f} GPU-days); on {e['gpus']} GPU(s) {e['wall_hours']:,.0f} h "
                   f"wall-clock (critical path {e['critical_path_hours']:,.0f} h)")
    if p.rates and p.rates.recommended != p.packing.nets_per_gpu:
        click.echo(f"the check recommends --nets-per-gpu {p.rates.recommended} on its card")


@click.command("run-all")
@click.argument("plan_dir", type=existing_dir())
@click.option("--gpus", type=GpuList(), help="Comma-separated GPU ids, e.g. 0,1,2,3.")
@click.option("--cpu-workers", type=click.IntRange(min=1), help="Train on the CPU instead, as K workers (default: 1).")
@click.option("--nets-per-gpu", type=click.IntRange(min=1),
              help="Runs at once on each GPU (or CPU worker), each its own Caffe (default: the plan's).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run_all(plan_dir, gpus, cpu_workers, nets_per_gpu, quiet) -> None:
    """Train every run of a plan: bases before their transfers, up to --nets-per-gpu runs per device.

    Finished runs are skipped and stopped ones resume; a failed run holds back only its
    dependants. Ctrl-C or SIGTERM makes every running Caffe snapshot before it stops."""
    from caffe_transfer.grid.scheduler import run_plan

    if gpus and cpu_workers:
        raise click.UsageError("give --gpus or --cpu-workers, not both")
    result = run_plan(plan_dir, workers=cpu_workers or 1, gpus=gpus, nets_per_gpu=nets_per_gpu, progress=not quiet)
    report_grid(result)
    if not result.complete:
        raise SystemExit(1)


@click.command()
@click.argument("plan_dir", type=existing_dir())
def status(plan_dir) -> None:
    """Show each run of a plan: waiting, ready, running, stopped, failed or done (with score),
    and its latest test beside the authors' curve for the same kind of run."""
    from collections import Counter

    from caffe_transfer.grid.plan import states
    from caffe_transfer.results.curves import check

    rows = states(plan_dir)
    click.echo(f"{'run':24} {'state':8} {'iteration':>17} {'val acc':>8} {'score':>7}  {'vs the authors’ curve':30}  detail")
    for r in rows:
        it = f"{r['iteration'] or 0}/{r['max_iter']}"
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        score = f"{r['score']:.4f}" if r["score"] is not None else "-"
        curve = check(Path(plan_dir) / r["name"]).label
        click.echo(f"{r['name']:24} {r['state'].value:8} {it:>17} {acc:>8} {score:>7}  {curve:30}  {r['detail'][:120]}")
    counts = Counter(r["state"].value for r in rows)
    click.echo(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
