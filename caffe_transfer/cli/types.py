"""Click parameter types: every value is parsed and checked where it enters, with one line that
names it and what was expected, before a command does anything."""

from __future__ import annotations

import math
from pathlib import Path

import click

from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.common.shell import one_line


class _Type(click.ParamType):
    """A type that parses text with `parse`; a CaffeTransferError from the library's own check
    becomes click's one-line "Invalid value" message."""

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value  # converted already
        try:
            return self.parse(value, param, ctx)
        except CaffeTransferError as e:
            self.fail(str(e), param, ctx)


class _Pair(_Type):
    """NAME=VALUE as (name, value parsed by `parse_value`); `example` shows the form."""

    def parse(self, value, param, ctx):
        key, sep, text = value.partition("=")
        if not (sep and key and text):
            self.fail(f"{value!r}: expected {self.name}, e.g. {self.example}", param, ctx)
        return key, self.parse_value(key, text, param, ctx)


class SolverOverride(_Pair):
    """KEY=VALUE, typed as the field is in Caffe's own SolverParameter."""

    name, example = "KEY=VALUE", "max_iter=500"

    def parse_value(self, key, text, param, ctx):
        from caffe_transfer.model.solvers import parse_override

        return parse_override(key, text)


class CudnnSwitch(_Pair):
    """KEY=VALUE of a cuDNN build's switches: (Caffe's environment variable, value)."""

    name, example = "KEY=VALUE", "algo=measure"

    def parse(self, value, param, ctx):
        from caffe_transfer.runs.cudnn import parse_switch

        return parse_switch(*super().parse(value, param, ctx))

    def parse_value(self, key, text, param, ctx):
        return text


class ClassSet(_Pair):
    """NAME=FILE with FILE a file of class indices or wnids: (name, sorted class indices)."""

    name, example = "NAME=FILE", "mysplitA=a.txt"

    def parse_value(self, key, text, param, ctx):
        from caffe_transfer.data.splits import read_class_set

        return read_class_set(existing_file().convert(text, param, ctx))


class CommaList(_Type):
    """a,b,c as a list of non-empty items, each one of `choices` where given."""

    name = "LIST"

    def __init__(self, choices: tuple[str, ...] | None = None):
        self.choices = choices

    def parse(self, value, param, ctx):
        items = [v.strip() for v in value.split(",")]
        if not all(items):
            self.fail(f"{value!r}: expected a comma-separated list without empty items", param, ctx)
        bad = [v for v in items if self.choices and v not in self.choices]
        if bad:
            self.fail(f"{bad[0]!r}: expected some of {', '.join(self.choices)}", param, ctx)
        return items


class GpuList(_Type):
    """0,1,3 as GPU ids: distinct non-negative integers."""

    name = "IDS"

    def parse(self, value, param, ctx):
        items = [v.strip() for v in value.split(",")]
        if not all(v.isdecimal() for v in items) or len(set(map(int, items))) != len(items):
            self.fail(f"{value!r}: expected distinct comma-separated GPU ids, e.g. 0,1", param, ctx)
        return [int(v) for v in items]


class FcOutputs(_Type):
    """fc8's width: a positive number or 'classes'."""

    name = "N|classes"

    def parse(self, value, param, ctx):
        if value == "classes":
            return value
        if not value.isdecimal() or int(value) < 1:
            self.fail(f"{value!r}: expected a positive number or 'classes'", param, ctx)
        return int(value)


class PositiveFloat(click.FloatRange):
    """A finite number above 0 (click's FloatRange lets nan and inf through)."""

    def __init__(self):
        super().__init__(min=0, min_open=True)

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r}: expected a finite number above 0", param, ctx)
        return number


class PathType(click.Path):
    """Every path the CLI takes: click's checks, and not empty or blank, which the OS reads as
    the current folder (an `--out ''` would write a run folder's files among the user's own)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail(f"{value!r}: expected a path, not an empty one (write . for the current folder)", param, ctx)
        return super().convert(value, param, ctx)


class ScriptPath(PathType):
    """A path that generated scripts will hold: no control characters (see common.shell)."""

    def convert(self, value, param, ctx):
        try:
            one_line(value, "path")
        except CaffeTransferError as e:
            self.fail(str(e), param, ctx)
        return super().convert(value, param, ctx)


class ScriptLine(_Type):
    """Free text for one line of a generated script (an #SBATCH option): no control characters."""

    name = "ARG"

    def parse(self, value, param, ctx):
        return one_line(value, "argument")


class RatesFile(_Type):
    """The GPU check's gpu_check.json, read and checked (`grid.rates`)."""

    name = "FILE"

    def parse(self, value, param, ctx):
        from caffe_transfer.grid.rates import read_rates

        return read_rates(existing_file().convert(value, param, ctx))


class LmdbFolder(PathType):
    """make-lmdb's OUT_DIR: a folder (made if missing) whose `lmdb` and `lmdb.partial` are its
    own, since the build renames one onto the other and deletes the partial one on --force."""

    def __init__(self):
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        folder = super().convert(value, param, ctx)
        for name in ("lmdb", "lmdb.partial"):
            if (folder / name).is_symlink():
                self.fail(f"{folder / name} is a symbolic link (to {(folder / name).readlink()}): make-lmdb "
                          "writes that folder itself; link OUT_DIR instead, or remove the link", param, ctx)
        return folder


class FilePrefix(_Type):
    """The start of output file names (PREFIX.train.csv, ...): its folder must exist."""

    name = "PREFIX"

    def parse(self, value, param, ctx):
        prefix = PathType(path_type=Path).convert(value, param, ctx)
        existing_dir().convert(str(prefix.parent), param, ctx)
        return prefix


def existing_file(**kwargs) -> PathType:
    return PathType(exists=True, dir_okay=False, path_type=Path, **kwargs)


def existing_dir(**kwargs) -> PathType:
    return PathType(exists=True, file_okay=False, path_type=Path, **kwargs)


def out_dir() -> PathType:
    """A folder to write into: not an existing file (it is made if missing)."""
    return PathType(file_okay=False, path_type=Path)


def out_file() -> PathType:
    """A file to write: not an existing folder."""
    return PathType(dir_okay=False, path_type=Path)
