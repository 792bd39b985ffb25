"""Options shared by several commands: a treatment's n and split, and what decides a run
folder's nets and solver (gen and plan)."""

from __future__ import annotations

from pathlib import Path

import click

from caffe_transfer.common.errors import CaffeTransferError


def treatment_options(f):
    f = click.option("--split", help="Split: 0..3 (random halves) or natman.")(f)
    f = click.option("--n", "n", type=int, help="Number of transferred (or frozen) layers, 1..7.")(f)
    return f


def parse_solver_override(values: tuple[str, ...]) -> dict:
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


def net_options(f):
    """The options that decide a run folder's nets and solver (gen and plan)."""
    for option in reversed([
        click.option("--arch", default="caffenet", show_default=True, help="Architecture: caffenet or small."),
        click.option("--data-root", default="data", show_default=True, type=click.Path(path_type=Path),
                     help="Folder with one subfolder per dataset (half0A_train/lmdb, .../mean.binaryproto)."),
        click.option("--backend", default="lmdb", show_default=True, help="Database backend: lmdb (the only one make-lmdb writes and this Caffe reads)."),
        click.option("--fc8-outputs", help="fc8 width: a number, or 'classes' for the paper's N-way head "
                     "(default: 1000 for caffenet, as in every released net; classes for small)."),
        click.option("--cpu", is_flag=True, help="solver_mode CPU instead of GPU."),
        click.option("--solver", "solver", multiple=True, metavar="KEY=VALUE",
                     help="Override a solver value, e.g. --solver max_iter=1000 (repeatable)."),
    ]):
        f = option(f)
    return f


def gen_options(arch, data_root, backend, fc8_outputs, cpu, solver, base_weights=None):
    from caffe_transfer.runs.gen import GenOptions

    return GenOptions(arch=arch, data_root=data_root, backend=backend, fc8_outputs=fc8_outputs,
                      base_weights=base_weights, gpu=not cpu, solver=parse_solver_override(solver))


def csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None
