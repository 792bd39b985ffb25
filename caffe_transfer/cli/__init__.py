"""The `caffe-transfer` command: a thin layer of click commands over the library's functions.

Each command's values are parsed and checked by click parameter types (`cli/types.py`), then it
calls one plain function. This module is the one error boundary: what a user or their machine can
cause (a CaffeTransferError, a bad option, a file that cannot be read or written, a broken JSON or
LMDB file) ends as one line and exit status 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
import traceback

import click

from caffe_transfer.cli import data, grid, results, runs
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.common.version import __version__

BUG_NOTE = ("caffe-transfer: this is a bug, not something you did: please report it with the traceback "
            "above and the command you ran")


def one_line(error: BaseException) -> str | None:
    """The message for an error the user's input or machine caused; None for a bug. An error
    raised while handling another (a full disk that fails a status write after failing Caffe)
    comes after the one it followed, which is the news."""
    message = _message(error)
    if message is None:
        return None
    context = _context(error)
    while isinstance(error, OSError) and isinstance(context, OSError) and context.errno == error.errno:
        context = _context(context)  # one failed write, told by write() and again by close()
    earlier = one_line(context) if context is not None else None
    return f"{earlier} (and then: {message})" if earlier else message


def _context(error: BaseException) -> BaseException | None:
    return None if error.__suppress_context__ else error.__context__


def _message(error: BaseException) -> str | None:
    import lmdb

    if isinstance(error, CaffeTransferError):
        return str(error)
    if isinstance(error, OSError):
        where = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
        reason = error.strerror or str(error)
        return f"{where}: {reason}" if where else reason
    if isinstance(error, json.JSONDecodeError):
        return f"a file is not valid JSON: {error}"
    if isinstance(error, lmdb.Error):
        return f"LMDB: {error}"
    return None


def _without_usage(error: click.UsageError) -> click.ClickException:
    """click's own check as one line, without the usage block it prints first."""
    one = click.ClickException(f"{error.format_message()} (see {error.ctx.command_path} -h)"
                               if error.ctx else error.format_message())
    one.exit_code = error.exit_code
    return one


class _Group(click.Group):
    """Every error a user can cause ends as one line: "Error: ..."."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _without_usage(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _without_usage(e) from None
        except BrokenPipeError:
            raise  # a reader that stopped early (`| head`): click ends quietly, as other tools do
        except Exception as e:
            message = one_line(e)
            if message is None:
                raise
            raise click.ClickException(" ".join(message.splitlines())) from None


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
    try:
        cli(prog_name="caffe-transfer")
    except Exception:
        traceback.print_exc()
        click.echo(BUG_NOTE, err=True)
        sys.exit(1)
