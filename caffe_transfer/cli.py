"""The `caffe-transfer` command: a thin layer of click commands over the library's functions.

Each command parses its options and calls one plain function. Errors the library raises as
CaffeTransferError become a one-line message and exit status 1, here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

import click

from . import __version__
from .errors import CaffeTransferError


class _Group(click.Group):
    """Every error a user can cause ends as one line: "Error: ..."."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CaffeTransferError as e:
            raise click.ClickException(str(e)) from None
        except click.UsageError as e:  # click's own checks, without the usage block it prints first
            one_line = click.ClickException(f"{e.format_message()} (see {e.ctx.command_path} -h)"
                                            if e.ctx else e.format_message())
            one_line.exit_code = e.exit_code
            raise one_line from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "terminal_width": 110,
                                          "max_content_width": 110})
@click.version_option(__version__, prog_name="caffe-transfer")
def cli() -> None:
    """Reproduce Yosinski et al. 2014, "How transferable are features in deep neural
    networks?", on real BVLC Caffe."""


@cli.command()
def doctor() -> None:
    """Report the Caffe install (binaries, pycaffe, versions, CPU/GPU) and how to fix gaps."""
    from .caffe_env import doctor as run_checks

    checks = run_checks()
    for c in checks:
        mark = "ok " if c.ok else "MISSING"
        click.echo(f"{mark:8}{c.what:28}{c.detail}")
        if c.fix:
            click.echo(f"{'':8}{'':28}-> {c.fix}")
    if not all(c.ok for c in checks):
        raise SystemExit(1)


def _treatment_options(f):
    f = click.option("--split", help="Split: 0..3 (random halves) or natman.")(f)
    f = click.option("--n", "n", type=int, help="Number of transferred (or frozen) layers, 1..7.")(f)
    return f


@cli.command()
@click.argument("name")
@_treatment_options
def describe(name: str, n: int | None, split: str | None) -> None:
    """Show what a treatment is: folder name, notation, datasets and what each layer gets."""
    from .architectures import architecture
    from .treatments import parse

    t = parse(name, n=n, split=split)
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


def _parse_solver_override(values: tuple[str, ...]) -> dict:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise CaffeTransferError(f"--solver {item!r}: expected KEY=VALUE, e.g. max_iter=500")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def _net_options(f):
    """The options that decide a run folder's nets and solver (gen and plan)."""
    for option in reversed([
        click.option("--arch", default="caffenet", show_default=True, help="Architecture: caffenet or small."),
        click.option("--data-root", default="data", show_default=True, type=click.Path(path_type=Path),
                     help="Folder with one subfolder per dataset (half0A_train/lmdb, .../mean.binaryproto)."),
        click.option("--backend", default="lmdb", show_default=True, help="Database backend: lmdb or leveldb."),
        click.option("--fc8-outputs", help="fc8 width: a number, or 'classes' for the paper's N-way head "
                     "(default: 1000 for caffenet, as in every released net; classes for small)."),
        click.option("--cpu", is_flag=True, help="solver_mode CPU instead of GPU."),
        click.option("--solver", "solver", multiple=True, metavar="KEY=VALUE",
                     help="Override a solver value, e.g. --solver max_iter=1000 (repeatable)."),
    ]):
        f = option(f)
    return f


def _gen_options(arch, data_root, backend, fc8_outputs, cpu, solver, base_weights=None):
    from .gen import GenOptions

    return GenOptions(arch=arch, data_root=data_root, backend=backend, fc8_outputs=fc8_outputs,
                      base_weights=base_weights, gpu=not cpu, solver=_parse_solver_override(solver))


@cli.command()
@click.option("--treatment", "-t", help="Paper notation (AnB, BnB+, baseA, random, ...) or an "
              "authors' folder name (transfer0A0B_1_3, half0A, nolearn_1_4, ...).")
@_treatment_options
@click.option("--all", "grid", is_flag=True, help="Write the authors' whole grid of 170 nets "
              "under OUT, one folder each, named as the authors named them.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Run folder to write (with --all: the folder that holds the run folders).")
@_net_options
@click.option("--base-weights", type=click.Path(path_type=Path),
              help="Base .caffemodel for a transfer (default: the base run's final snapshot beside OUT).")
@click.option("--force", is_flag=True, help="Overwrite run folders that already hold snapshots.")
def gen(treatment, n, split, grid, out, arch, data_root, backend, fc8_outputs, base_weights, cpu,
        solver, force) -> None:
    """Write solver, train/val and deploy prototxts and treatment.json for a treatment."""
    from .treatments import authors_grid, parse

    options = _gen_options(arch, data_root, backend, fc8_outputs, cpu, solver, base_weights)
    if grid:
        if treatment or n is not None or split is not None:
            raise CaffeTransferError("--all writes the whole grid: drop --treatment/--n/--split")
        runs = {out / t.name: t for t in authors_grid()}
    elif treatment:
        runs = {out: parse(treatment, n=n, split=split)}
    else:
        raise CaffeTransferError("gen needs --treatment NAME (e.g. AnB --n 3 --split 0) or --all")
    from .gen import write_runs

    written = write_runs(runs, options, force=force)
    if grid:
        click.echo(f"wrote {len(written)} run folders under {out}")
    else:
        click.echo(f"wrote {runs[out].describe()} to {out}")


@cli.command()
@click.option("--whole-list", required=False, type=click.Path(path_type=Path),
              help="The whole list (`PATH LABEL` per line, ILSVRC2012 class indices).")
@click.option("--subset", type=click.Choice(["train", "valid"]), help="Which subset the whole list is.")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Folder for the list folders.")
@click.option("--classes", "class_sets", multiple=True, metavar="NAME=FILE",
              help="Custom halves instead of the paper's: a dataset name and a file of class indices "
                   "or wnids (repeatable), e.g. --classes mysplitA=a.txt --classes mysplitB=b.txt.")
@click.option("--num-classes", default=1000, show_default=True, help="Classes in the whole list.")
@click.option("--check", "check_dir", type=click.Path(path_type=Path),
              help="Verify a folder of lists instead: disjoint halves, complete cover, labels 0..K-1.")
def splits(whole_list, subset, out, class_sets, num_classes, check_dir) -> None:
    """Write the paper's class-split lists, byte-identical to the authors'.

    The 4 random A/B halves, natural/man-made and (for train) the reduced sets; or --check a
    folder of lists."""
    from .splits import check_lists, read_class_set, write_splits

    if check_dir:
        problems = check_lists(check_dir)
        for p in problems:
            click.echo(f"problem: {p}")
        if problems:
            raise SystemExit(1)
        click.echo(f"{check_dir}: lists are consistent")
        return
    if not (whole_list and subset and out):
        raise CaffeTransferError("splits needs --whole-list FILE --subset train|valid --out DIR (or --check DIR)")
    custom = None
    if class_sets:
        custom = {}
        for item in class_sets:
            name, sep, path = item.partition("=")
            if not sep:
                raise CaffeTransferError(f"--classes {item!r}: expected NAME=FILE")
            custom[name] = read_class_set(path)
    folders = write_splits(whole_list, subset, out, custom=custom, num_classes=num_classes)
    click.echo(f"wrote {len(folders)} list folders under {out}: {', '.join(f.name for f in folders)}")


@cli.command()
@click.option("--train-dir", required=True, type=click.Path(path_type=Path), help="Tree of CLASS/IMAGE.")
@click.option("--val-dir", type=click.Path(path_type=Path), help="Val images: CLASS/IMAGE, or flat with --val-labels.")
@click.option("--val-labels", type=click.Path(path_type=Path),
              help="Label file for a flat val folder: `NAME LABEL`, `NAME WNID`, or one label per line.")
@click.option("--out", "-o", default=".", show_default=True, type=click.Path(path_type=Path))
def lists(train_dir, val_dir, val_labels, out) -> None:
    """Write whole_train.txt and whole_valid.txt from an image tree (classes in sorted order)."""
    from .lists import write_whole_lists

    for path in write_whole_lists(train_dir, val_dir, out, val_labels):
        click.echo(f"wrote {path} ({sum(1 for _ in path.open())} images)")


@cli.command("make-lmdb")
@click.argument("list_file", type=click.Path(path_type=Path))
@click.argument("image_root", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--resize", default=256, show_default=True, help="Resize to N x N (0 keeps sizes).")
@click.option("--encoded", is_flag=True, help="Store JPEG bytes instead of raw pixels (about 8x smaller).")
@click.option("--gray", is_flag=True, help="One grey channel instead of BGR.")
@click.option("--no-shuffle", is_flag=True, help="Keep the list order (default: shuffle with --seed).")
@click.option("--seed", default=0, show_default=True, help="Shuffle seed.")
@click.option("--workers", type=click.IntRange(min=1), help="Decoding processes (default: all cores).")
@click.option("--force", is_flag=True, help="Rebuild a complete LMDB.")
def make_lmdb(list_file, image_root, out_dir, resize, encoded, gray, no_shuffle, seed, workers, force) -> None:
    """Build an LMDB and its mean image from a list (resumable, parallel).

    Writes OUT_DIR/lmdb and OUT_DIR/mean.binaryproto as convert_imageset and compute_image_mean
    would, with a progress bar; a killed build continues where it stopped."""
    from .lmdb_builder import BuildOptions, build

    options = BuildOptions(resize=resize, shuffle=not no_shuffle, seed=seed, encoded=encoded,
                           workers=workers, gray=gray)
    result = build(list_file, image_root, out_dir, options, force=force)
    if result.already_complete:
        click.echo(f"{result.lmdb} is already complete ({result.written} images); --force rebuilds it")
        return
    rate = result.written / result.seconds if result.seconds else 0
    warned = f"; {result.warned} with decoder warnings (see {out_dir / 'warnings.txt'})" if result.warned else ""
    click.echo(f"wrote {result.written} images to {result.lmdb} in {result.seconds:.1f} s ({rate:.0f} images/s); "
               f"skipped {result.skipped} (see {out_dir / 'skipped.txt'}){warned}; "
               f"mean: {result.mean or 'none (mixed sizes)'}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--base", type=click.Path(path_type=Path),
              help="Base .caffemodel (default: the base run's final snapshot, as gen recorded it).")
@click.option("--out", type=click.Path(path_type=Path), help="Init weights to write (default: RUN_DIR/init.caffemodel).")
@click.option("--seed", type=int, help="Seed of the filler init of the layers not copied (default: from the run's name).")
def transplant(run_dir, base, out, seed) -> None:
    """Copy a transfer's first n layers from its base by net surgery (checked bit for bit).

    Writes the init .caffemodel and RUN_DIR/transplant.json (per layer: copied from where or
    filler-initialised, shapes, checksums, frozen)."""
    from .surgery import transplant as run_transplant

    result = run_transplant(run_dir, base=base, out=out, seed=seed)
    for layer in result.layers:
        what = f"copied from {layer['from_run']}:{layer['from_layer']}" if layer["action"] == "copied" \
            else f"filler init (seed {result.seed})"
        shapes = " ".join("x".join(map(str, b["shape"])) for b in layer["blobs"])
        click.echo(f"  {layer['layer']:10} {what:34} {'frozen' if layer['frozen'] else 'trained':8} {shapes}")
    click.echo(f"wrote {result.init} and {result.record}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--gpu", type=int, help="GPU id (default: as the solver says; CPU runs need gen --cpu).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(run_dir, gpu, quiet) -> None:
    """Run caffe train on a run folder: resumes from its newest snapshot, log in RUN_DIR/train.log.

    A transfer starts from its transplanted init (made from the base's final snapshot if missing).
    Ctrl-C or SIGTERM makes Caffe snapshot before it stops; run the command again to resume."""
    from .train import train as run_train

    result = run_train(run_dir, gpu=gpu, progress=not quiet)
    name = result.run.name
    if result.status == "stopped":
        click.echo(f"{name}: stopped at iteration {result.iteration} with a snapshot; run again to resume")
        raise SystemExit(130)
    if result.status == "already finished":
        click.echo(f"{name}: already finished ({result.run.final_model})")
        return
    click.echo(f"{name}: trained iterations {result.start}..{result.iteration} in {result.seconds:.0f} s; "
               f"final weights {result.run.final_model}; log {result.run.log}")


def _report_grid(result, when: str = "") -> None:
    """How many runs of a grid trained, what happened to the others; exit 130 when a signal
    stopped it (run the command again to continue)."""
    from .scheduler import DONE

    click.echo(f"{result.trained}/{len(result.outcomes)} runs trained {when}".rstrip())
    for outcome in result.outcomes.values():
        if outcome.status not in (*DONE, "not started"):
            click.echo(f"  {outcome.name}: {outcome.status} {outcome.error}".rstrip())
    if result.interrupted:
        click.echo("stopped; run the same command again to continue")
        raise SystemExit(130)


@cli.command()
@click.option("--out", "-o", default="demo", show_default=True, type=click.Path(path_type=Path),
              help="Folder for data, runs and report (run again to continue).")
@click.option("--preset", default="standard", show_default=True, type=click.Choice(["quick", "standard"]),
              help="standard: the grid in about 15 minutes on 2 cores; quick: a 2-minute smoke run.")
@click.option("--workers", type=click.IntRange(min=1), help="Runs trained at once (default: one per core).")
def demo(out, preset, workers) -> None:
    """The scaled-down reproduction on Fashion-MNIST, CPU only: data, grid, training, report.

    Bases, BnB, BnB+, AnB, AnB+ for n = 1..7 (standard also: a dissimilar split and the
    random-frozen nets), then Figure 2, Table 1 and findings.md in OUT/report."""
    from .demo import run_demo

    result = run_demo(out, preset, workers=workers)
    _report_grid(result.grid, f"in {result.seconds / 60:.1f} min")
    click.echo((result.report / "findings.md").read_text(), nl=False)
    click.echo(f"report: {result.report}/ (figure2.png, table1.csv, findings.md, report.txt)")
    if not result.grid.complete:
        raise SystemExit(1)


def _csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@cli.command()
@click.option("--experiments", default="all", show_default=True,
              help="Comma-separated: random, natman, nolearn, reduced, netbase, or all.")
@click.option("--splits", default="0,1,2,3", show_default=True, help="Random splits of the random experiment.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Plan folder (one run folder per net).")
@_net_options
@click.option("--iter-seconds", type=click.FloatRange(min=0, min_open=True),
              help="Seconds per iteration, for the cost estimate.")
@click.option("--gpus", "gpu_count", type=click.IntRange(min=1), default=1, show_default=True,
              help="GPUs for the wall-clock estimate.")
@click.option("--scheduler", type=click.Choice(["none", "slurm"]), default="none", show_default=True,
              help="slurm: also write job arrays and submit.sh under OUT/slurm.")
@click.option("--cpus-per-task", default=1, show_default=True, help="SLURM: CPUs per run (OpenBLAS threads).")
@click.option("--grace", default=120, show_default=True,
              help="SLURM: seconds before the time limit at which a run snapshots and requeues.")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="ARG",
              help="SLURM: an extra #SBATCH line, e.g. --sbatch-arg=--partition=gpu (repeatable).")
@click.option("--force", is_flag=True, help="Overwrite run folders that already hold snapshots.")
def plan(experiments, splits, out, arch, data_root, backend, fc8_outputs, cpu, solver, iter_seconds, gpu_count,
         scheduler, cpus_per_task, grace, sbatch_args, force) -> None:
    """Write the run folders of (part of) the grid and plan.json, the dependency graph.

    Prints the number of runs, the critical path and, with --iter-seconds, GPU-hours and
    wall-clock time on --gpus GPUs."""
    from . import plan as plan_mod

    treatments = plan_mod.select(_csv_list(experiments), _csv_list(splits))
    options = _gen_options(arch, data_root, backend, fc8_outputs, cpu, solver)
    path = plan_mod.write_plan(out, treatments, options, force=force)
    runs = plan_mod.read_plan(out)
    bases = sum(1 for r in runs if any(o.base == r.name for o in runs))
    click.echo(f"wrote {len(runs)} run folders and {path}: {bases} bases with dependants, "
               f"{sum(1 for r in runs if r.base)} transfers, {sum(r.max_iter for r in runs):,} iterations in all")
    click.echo(f"critical path: {' -> '.join(plan_mod.critical_path(runs))}")
    if scheduler == "slurm":
        from .slurm import write_slurm

        submit = write_slurm(out, runs, gpu=not cpu, cpus=cpus_per_task, grace=grace, sbatch_args=sbatch_args)
        click.echo(f"wrote SLURM job arrays; submit them with {submit}")
    if iter_seconds:
        e = plan_mod.estimate(runs, iter_seconds, gpu_count)
        click.echo(f"at {iter_seconds} s/iteration: {e['gpu_hours']:,.0f} GPU-hours ({e['gpu_hours'] / 24:,.1f} GPU-days); "
                   f"on {gpu_count} GPU(s) {e['wall_hours']:,.0f} h wall-clock "
                   f"(critical path {e['critical_path_hours']:,.0f} h)")


@cli.command("run-all")
@click.argument("plan_dir", type=click.Path(path_type=Path))
@click.option("--gpus", help="Comma-separated GPU ids, one run per GPU, e.g. 0,1,2,3.")
@click.option("--cpu-workers", type=click.IntRange(min=1), help="Runs at once on the CPU instead (default: 1).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def run_all(plan_dir, gpus, cpu_workers, quiet) -> None:
    """Train every run of a plan: bases before their transfers, one run per device.

    Finished runs are skipped and stopped ones resume; a failed run holds back only its
    dependants. Ctrl-C or SIGTERM makes every running Caffe snapshot before it stops."""
    from .plan import read_plan
    from .scheduler import run_grid

    if gpus and cpu_workers:
        raise CaffeTransferError("give --gpus or --cpu-workers, not both")
    try:
        gpu_ids = [int(g) for g in _csv_list(gpus)] if gpus else None
    except ValueError:
        raise CaffeTransferError(f"--gpus {gpus!r}: expected comma-separated GPU ids, e.g. 0,1") from None
    workers = cpu_workers or 1
    runs = [Path(plan_dir) / r.name for r in read_plan(plan_dir)]
    result = run_grid(runs, workers=workers, gpus=gpu_ids, progress=not quiet)
    _report_grid(result)
    if not result.complete:
        raise SystemExit(1)


@cli.command()
@click.argument("plan_dir", type=click.Path(path_type=Path))
def status(plan_dir) -> None:
    """Show each run of a plan: waiting, ready, running, stopped, failed or done (with score)."""
    from collections import Counter

    from .plan import states

    rows = states(plan_dir)
    click.echo(f"{'run':24} {'state':8} {'iteration':>17} {'val acc':>8} {'score':>7}  detail")
    for r in rows:
        it = f"{r['iteration'] or 0}/{r['max_iter']}"
        acc = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
        score = f"{r['score']:.4f}" if r["score"] is not None else "-"
        click.echo(f"{r['name']:24} {r['state']:8} {it:>17} {acc:>8} {score:>7}  {r['detail'][:120]}")
    counts = Counter(r["state"] for r in rows)
    click.echo(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))


@cli.command("parse-log")
@click.argument("logs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--csv", "csv_prefix", type=click.Path(path_type=Path),
              help="Write OUT.train.csv and OUT.test.csv (parse_log.py's columns).")
def parse_log(logs: tuple[Path, ...], csv_prefix: Path | None) -> None:
    """Parse caffe train logs into tables and print the paper's metric.

    Reads 2014 and today's formats, plain or gzipped; several files of one run are merged by
    iteration, later files winning."""
    from . import logs as logs_mod

    tables = logs_mod.read_logs(list(logs))
    acc = tables.accuracies()
    click.echo(f"{len(tables.train)} train rows, {len(tables.test)} test rows, "
               f"last iteration {tables.last_iteration}")
    if acc:
        click.echo(f"top-10 mean val accuracy {logs_mod.score(acc):.4f} (final {acc[-1]:.4f}, max {max(acc):.4f})")
    for problem in tables.problems:
        click.echo(f"warning: {problem}")
    if csv_prefix:
        for name, rows in (("train", tables.train), ("test", tables.test)):
            path = csv_prefix.parent / f"{csv_prefix.name}.{name}.csv"
            logs_mod.write_csv(rows, path)
            click.echo(f"wrote {path}")


@cli.command()
@click.argument("results_dir", type=click.Path(path_type=Path))
@click.option("--out", "-o", default="report", show_default=True, type=click.Path(path_type=Path),
              help="Folder for figures, tables (CSV) and report.txt.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the numbers as JSON here.")
def report(results_dir: Path, out: Path, json_path: Path | None) -> None:
    """Score runs; draw Figures 2-3, Table 1; compare with the paper.

    Also the reduced-data curve, CSV tables, and the runs whose logs are missing or incomplete."""
    from .report import write_report

    write_report(results_dir, out, json_path)
    click.echo((out / "report.txt").read_text(), nl=False)
    click.echo(f"wrote {out}/ (figure2, figure3, reduced as PNG and PDF; runs, layer_means, table1, "
               "comparison, incomplete as CSV; report.txt, report.json)")


def main() -> None:
    cli(prog_name="caffe-transfer")
