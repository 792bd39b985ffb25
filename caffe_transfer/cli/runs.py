"""Run-folder commands: describe a treatment, write its folder, transplant its weights, train it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from caffe_transfer.cli.options import GroupedCommand, net_options, treatment_options
from caffe_transfer.cli.types import (
    ScriptPath,
    existing_dir,
    existing_file,
    out_dir,
    out_file,
)

if TYPE_CHECKING:
    from caffe_transfer.model.treatments import Treatment


def _treatment(name: str, n: int | None, split: str | None) -> tuple[Treatment, list[str]]:
    """The treatment a name means, with the paper's first random split where a short name needs
    a split and --split is not given; and that choice, to tell the user."""
    from caffe_transfer.model.treatments import FIRST_SPLIT, SPLIT_IDS, needs_split, parse

    if split is None and needs_split(name):
        return parse(name, n=n, split=FIRST_SPLIT), [
            f"split {FIRST_SPLIT}, the paper's first random split (or --split "
            f"{'|'.join(s for s in SPLIT_IDS if s != FIRST_SPLIT)})"]
    return parse(name, n=n, split=split), []


@click.command()
@click.argument("name")
@treatment_options
def describe(name: str, n: int | None, split: str | None) -> None:
    """Show what a treatment is: folder name, notation, datasets and what each layer gets
    (a short name without --split: split 0)."""
    from caffe_transfer.model.architectures import architecture

    t, _ = _treatment(name, n, split)
    weight_layers = [w.name for w in architecture("caffenet", 1000).weight_layers]
    click.echo(f"folder      {t.name}")
    click.echo(f"notation    {t.notation}   (family {t.family}{', split ' + t.split if t.split else ''})")
    click.echo(f"trains on   {t.train_set}, validates on {t.val_set}, mean of {t.mean_set}")
    click.echo(f"solver      {t.schedule} schedule")
    if t.base:
        click.echo(f"base        {t.base.name} (its final snapshot)")
    for role in t.layer_roles(weight_layers):
        source = f"copied from {role.copied_from}" if role.copied_from else "filler init"
        click.echo(f"  {role.name:10} {source:22} {'frozen' if role.frozen else 'trained'}")


@click.command(cls=GroupedCommand)
@click.option("--treatment", "-t", help="Paper notation (AnB, BnB+, baseA, random, ...) or an "
              "authors' folder name (transfer0A0B_1_3, half0A, nolearn_1_4, ...).")
@treatment_options
@click.option("--all", "grid", is_flag=True, help="Write the authors' whole grid of 170 nets "
              "under OUT, one folder each, named as the authors named them.")
@click.option("--out", "-o", type=out_dir(),
              help="Run folder to write (default: the authors' folder name, e.g. transfer0A0B_1_3, in the "
                   "current folder; with --all, required: the folder that holds the run folders).")
@click.option("--base-weights", type=ScriptPath(dir_okay=False, path_type=Path),
              help="Base .caffemodel for a transfer (default: the base run's final snapshot beside OUT).")
@click.option("--force", is_flag=True, help="Write run folders that hold snapshots (kept: they then refuse "
              "to resume until moved aside) or files gen did not write, or that were edited since.")
@net_options
def gen(treatment, n, split, grid, out, base_weights, force, options) -> None:
    """Write solver, train/val and deploy prototxts and treatment.json for a treatment.

    `gen --treatment AnB --n 3` alone takes split 0 and writes ./transfer0A0B_1_3, and says so."""
    from caffe_transfer.runs.gen import write_grid, write_runs

    options.base_weights = base_weights
    if grid:
        if treatment or n is not None or split is not None:
            raise click.UsageError("--all writes the whole grid: drop --treatment/--n/--split")
        if out is None:
            raise click.UsageError("gen --all needs --out DIR, the folder that will hold the 170 run folders")
        click.echo(f"wrote {len(write_grid(out, options, force=force))} run folders under {out}")
    elif treatment:
        t, chose = _treatment(treatment, n, split)
        if out is None:
            out = Path(t.name)
            chose.append(f"folder ./{out}, the authors' name for it (or --out DIR)")
        if chose:
            click.echo(f"chose {', and '.join(chose)}")
        write_runs({out: t}, options, force=force)
        click.echo(f"wrote {t.describe()} to {out}")
    else:
        raise click.UsageError("gen needs --treatment NAME (e.g. AnB --n 3 --split 0) or --all")


@click.command()
@click.argument("run_dir", type=existing_dir())
@click.option("--base", type=existing_file(),
              help="Base .caffemodel (default: the base run's final snapshot, as gen recorded it).")
@click.option("--out", type=out_file(), help="Init weights to write (default: RUN_DIR/init.caffemodel).")
@click.option("--seed", type=click.IntRange(0, 2 ** 32 - 1),
              help="Seed of the filler init of the layers not copied (default: from the run's name).")
@click.option("--force", is_flag=True, help="Write --out (and OUT.json) over files transplant did not write.")
def transplant(run_dir, base, out, seed, force) -> None:
    """Copy a transfer's first n layers from its base by net surgery (checked bit for bit).

    Writes the init .caffemodel and RUN_DIR/transplant.json (per layer: copied from where or
    filler-initialised, shapes, checksums, frozen). Made by pycaffe, or by the caffe tool where
    pycaffe does not import (the same file; CAFFE_TRANSFER_FILL=caffe forces it)."""
    from caffe_transfer.runs.transplant import transplant as run_transplant

    result = run_transplant(run_dir, base=base, out=out, seed=seed, force=force)
    for layer in result.layers:
        what = f"copied from {layer['from_run']}:{layer['from_layer']}" if layer["action"] == "copied" \
            else f"filler init (seed {result.seed})"
        shapes = " ".join("x".join(map(str, b["shape"])) for b in layer["blobs"])
        click.echo(f"  {layer['layer']:10} {what:34} {'frozen' if layer['frozen'] else 'trained':8} {shapes}")
    click.echo(f"wrote {result.init} and {result.record}")


@click.command()
@click.argument("run_dir", type=existing_dir())
@click.option("--gpu", type=click.IntRange(min=0), help="GPU id (default: as the solver says; CPU runs need gen --cpu).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(run_dir, gpu, quiet) -> None:
    """Run caffe train on a run folder: resumes from its newest snapshot, log in RUN_DIR/train.log.

    A transfer starts from its transplanted init (made from the base's final snapshot if missing).
    Ctrl-C, SIGTERM or SIGHUP makes Caffe snapshot before it stops; run the command again to resume."""
    from caffe_transfer.runs.folder import STOPPED_EXIT, State
    from caffe_transfer.runs.train import train as run_train

    result = run_train(run_dir, gpu=gpu, progress=not quiet, on_note=lambda note: click.echo(note, err=True))
    name = result.run.name
    if result.state is State.STOPPED:
        click.echo(f"{name}: stopped at iteration {result.iteration} with a snapshot; run again to resume")
        raise SystemExit(STOPPED_EXIT)
    if result.already_done:
        click.echo(f"{name}: already finished ({result.run.final_model})")
        return
    click.echo(f"{name}: trained iterations {result.start}..{result.iteration} in {result.seconds:.0f} s; "
               f"final weights {result.run.final_model}; log {result.run.log}")
