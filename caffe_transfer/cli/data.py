"""Data commands: the paper's class splits, whole lists from an image tree, LMDBs and means."""

from __future__ import annotations

import click

from caffe_transfer.cli.options import experiment_options
from caffe_transfer.cli.types import (
    ClassSet,
    LmdbFolder,
    existing_dir,
    existing_file,
    out_dir,
)


@click.command()
@click.option("--whole-list", required=False, type=existing_file(),
              help="The whole list (`PATH LABEL` per line, ILSVRC2012 class indices).")
@click.option("--subset", type=click.Choice(["train", "valid"]), help="Which subset the whole list is.")
@click.option("--out", "-o", type=out_dir(), help="Folder for the list folders.")
@click.option("--classes", "class_sets", multiple=True, type=ClassSet(),
              help="Custom halves instead of the paper's: a dataset name and a file of class indices "
                   "or wnids (repeatable), e.g. --classes mysplitA=a.txt --classes mysplitB=b.txt.")
@click.option("--num-classes", type=click.IntRange(min=2), help="Classes in the whole list (default: inferred; "
              "a list of ImageNet's synset folders must then have all 1000).")
@click.option("--check", "check_dir", type=existing_dir(),
              help="Verify a folder of lists instead: disjoint halves, complete cover, labels 0..K-1, "
                   "every class with images, each path once and of one class.")
def splits(whole_list, subset, out, class_sets, num_classes, check_dir) -> None:
    """Write the paper's class-split lists, byte-identical to the authors'.

    The 4 random A/B halves, natural/man-made and (for train) the reduced sets; or --check a
    folder of lists."""
    from caffe_transfer.data.splits import check_lists, write_splits

    if check_dir:
        problems = check_lists(check_dir)
        for p in problems:
            click.echo(f"problem: {p}")
        if problems:
            raise SystemExit(1)
        click.echo(f"{check_dir}: lists are consistent")
        return
    if not (whole_list and subset and out):
        raise click.UsageError("splits needs --whole-list FILE --subset train|valid --out DIR (or --check DIR)")
    result = write_splits(whole_list, subset, out, custom=dict(class_sets) or None, num_classes=num_classes)
    for note in result.notes:
        click.echo(f"{whole_list}: {note}")
    click.echo(f"wrote {len(result.folders)} list folders under {out}: {', '.join(f.name for f in result.folders)}")


@click.command()
@click.option("--train-dir", required=True, type=existing_dir(), help="Tree of CLASS/IMAGE.")
@click.option("--val-dir", type=existing_dir(), help="Val images: CLASS/IMAGE, or flat with --devkit, --val-solution or --val-labels.")
@click.option("--devkit", type=existing_dir(),
              help="Label a flat val folder by the ILSVRC2012 devkit folder (data/meta.mat and the ground truth).")
@click.option("--val-solution", type=existing_file(),
              help="Label a flat val folder by Kaggle's LOC_val_solution.csv.")
@click.option("--val-labels", type=existing_file(),
              help="Label a flat val folder by a file of `NAME LABEL` (Caffe's val.txt) or `NAME WNID` lines.")
@click.option("--out", "-o", default=".", show_default=True, type=out_dir())
def lists(train_dir, val_dir, devkit, val_solution, val_labels, out) -> None:
    """Write whole_train.txt and whole_valid.txt from an image tree (classes in sorted order)."""
    from caffe_transfer.data.lists import write_whole_lists

    for path in write_whole_lists(train_dir, val_dir, out, val_labels, devkit, val_solution, say=click.echo):
        click.echo(f"wrote {path} ({sum(1 for _ in path.open())} images)")


def build_options(f):
    """The options that decide an LMDB's contents, and how it is built (make-lmdb and prepare)."""
    for option in reversed([
        click.option("--resize", default=256, show_default=True, type=click.IntRange(min=0), help="Resize to N x N (0 keeps sizes)."),
        click.option("--encoded", is_flag=True, help="Store JPEG bytes instead of raw pixels (about 8x smaller)."),
        click.option("--gray", is_flag=True, help="One grey channel instead of BGR."),
        click.option("--no-shuffle", is_flag=True, help="Keep the list order (default: shuffle with --seed)."),
        click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Shuffle seed."),
        click.option("--workers", type=click.IntRange(min=1), help="Decoding processes (default: all cores)."),
        click.option("--force", is_flag=True, help="Rebuild a complete LMDB, or restart a half-built one of other "
                     "settings (never one make-lmdb did not write)."),
    ]):
        f = option(f)
    return f


def _options(resize, encoded, gray, no_shuffle, seed, workers):
    from caffe_transfer.data.lmdb import BuildOptions

    return BuildOptions(resize=resize, shuffle=not no_shuffle, seed=seed, encoded=encoded, workers=workers, gray=gray)


@click.command("make-lmdb")
@click.argument("list_file", type=existing_file())
@click.argument("image_root", type=existing_dir())
@click.argument("out_dir", type=LmdbFolder())
@build_options
def make_lmdb(list_file, image_root, out_dir, resize, encoded, gray, no_shuffle, seed, workers, force) -> None:
    """Build an LMDB and its mean image from a list (resumable, parallel).

    Writes OUT_DIR/lmdb and OUT_DIR/mean.binaryproto as convert_imageset and compute_image_mean
    would, with a progress bar; a killed build continues where it stopped."""
    from caffe_transfer.data.lmdb import build

    result = build(list_file, image_root, out_dir, _options(resize, encoded, gray, no_shuffle, seed, workers),
                   force=force)
    if result.already_complete:
        click.echo(f"{result.lmdb} is already complete ({result.written} images); --force rebuilds it")
        return
    rate = result.written / result.seconds if result.seconds else 0
    warned = f"; {result.warned} with decoder warnings (see {out_dir / 'warnings.txt'})" if result.warned else ""
    click.echo(f"wrote {result.written} images to {result.lmdb} in {result.seconds:.1f} s ({rate:.0f} images/s); "
               f"skipped {result.skipped} (see {out_dir / 'skipped.txt'}){warned}; "
               f"mean: {result.mean or 'none (mixed sizes)'}")


@click.command()
@click.option("--train-dir", required=True, type=existing_dir(), help="ImageNet's train tree, WNID/IMAGE.")
@click.option("--val-dir", required=True, type=existing_dir(),
              help="Val images: flat (with --devkit, --val-solution or --val-labels) or CLASS/IMAGE.")
@click.option("--devkit", type=existing_dir(), help="The ILSVRC2012 devkit folder, for val labels.")
@click.option("--val-solution", type=existing_file(), help="Kaggle's LOC_val_solution.csv, for val labels.")
@click.option("--val-labels", type=existing_file(), help="`NAME LABEL` or `NAME WNID` lines, for val labels.")
@click.option("--num-classes", type=click.IntRange(min=2),
              help="Class folders in the train tree (default: inferred; a tree of wnid folders must then "
                   "have all 1000).")
@experiment_options
@click.option("--out", "-o", "data_root", required=True, type=out_dir(),
              help="DATA_ROOT: lists, and one folder per dataset (gen's and plan's --data-root).")
@build_options
def prepare(train_dir, val_dir, devkit, val_solution, val_labels, num_classes, experiments, splits, data_root, resize,
            encoded, gray, no_shuffle, seed, workers, force) -> None:
    """Write every list, split, LMDB and mean the chosen experiments need, decoding each image once.

    Prints the disk each dataset needs (raw and --encoded) and refuses a disk too small; one
    progress bar for all; a killed run continues where it stopped."""
    from caffe_transfer.data.prepare import prepare as run
    from caffe_transfer.grid.plan import select

    treatments = select(experiments, splits)
    datasets = sorted({name for t in treatments for name in (t.train_set, t.val_set)})
    done = run(train_dir, val_dir, data_root, datasets, _options(resize, encoded, gray, no_shuffle, seed, workers),
               val_labels, devkit, val_solution, force, say=click.echo, num_classes=num_classes)
    for note in done.notes:
        click.echo(note)
    built = sum(not r.already_complete for r in done.results.values())
    click.echo(f"{len(done.results)} datasets under {data_root} ({built} built now, "
               f"{len(done.results) - built} already complete): {', '.join(done.results)}")
