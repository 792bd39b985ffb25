"""Result commands: caffe train logs as tables and the paper's metric; the report."""

from __future__ import annotations

from pathlib import Path

import click

from caffe_transfer.cli.types import (
    FilePrefix,
    existing_dir,
    existing_file,
    out_dir,
    out_file,
)


@click.command("parse-log")
@click.argument("logs", nargs=-1, required=True, type=existing_file())
@click.option("--csv", "csv_prefix", type=FilePrefix(),
              help="Write OUT.train.csv and OUT.test.csv (parse_log.py's columns).")
def parse_log(logs: tuple[Path, ...], csv_prefix: Path | None) -> None:
    """Parse caffe train logs into tables and print the paper's metric.

    Reads 2014 and today's formats, plain or gzipped; several files of one run are merged by
    iteration, later files winning."""
    from caffe_transfer.runs import logs as logs_mod

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


@click.command()
@click.argument("results_dir", type=existing_dir())
@click.option("--out", "-o", default="report", show_default=True, type=out_dir(),
              help="Folder for figures, tables (CSV) and report.txt.")
@click.option("--json", "json_path", type=out_file(), help="Also write the numbers as JSON here.")
def report(results_dir: Path, out: Path, json_path: Path | None) -> None:
    """Score runs; draw Figures 2-3, Table 1; compare with the paper.

    Also the reduced-data curve, CSV tables, and the runs whose logs are missing or incomplete."""
    from caffe_transfer.results.report import write_report

    write_report(results_dir, out, json_path)
    click.echo((out / "report.txt").read_text(), nl=False)
    click.echo(f"wrote {out}/ (figure2, figure3, reduced as PNG and PDF; runs, layer_means, table1, "
               "comparison, incomplete as CSV; report.txt, report.json)")
