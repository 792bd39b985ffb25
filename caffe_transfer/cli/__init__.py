"""The `caffe-transfer` command: a thin layer of click commands over the library's functions.

Each command parses its options and calls one plain function. Errors the library raises as
CaffeTransferError become a one-line message and exit status 1, here and nowhere else.
"""

from __future__ import annotations

import click

from caffe_transfer.cli import data, grid, results, runs
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.common.version import __version__


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
    from caffe_transfer.common.caffe_env import doctor as run_checks

    checks = run_checks()
    for c in checks:
        mark = "ok " if c.ok else "MISSING"
        click.echo(f"{mark:8}{c.what:28}{c.detail}")
        if c.fix:
            click.echo(f"{'':8}{'':28}-> {c.fix}")
    if not all(c.ok for c in checks):
        raise SystemExit(1)


for _module in (data, runs, grid, results):
    for _command in vars(_module).values():
        if isinstance(_command, click.Command):
            cli.add_command(_command)


def main() -> None:
    cli(prog_name="caffe-transfer")
