"""Every bad value a command takes: a non-zero exit, one line on stderr naming it, no traceback,
and no file of the user's changed (issue 18)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from click.testing import CliRunner

from caffe_transfer.cli import cli
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.grid.plan import PlanRun
from caffe_transfer.grid.slurm import write_slurm
from caffe_transfer.model.treatments import parse
from caffe_transfer.runs import gen

NL = "\n"
REPO = Path(__file__).resolve().parent.parent

# Rows as data: (command line with {t} for the user's tree, a fragment the one line must hold).
# A new option gets a row here; test_every_command_and_option_with_a_value_is_probed names the
# ones without. The tree holds afile (a file), adir (an empty folder), img/c0/*.png with list.txt,
# negative.txt (a list with label -3), oneclass/files.txt (label 1 beside an idxmap of one class),
# imagenet999.txt (ImageNet synset paths of 999 classes), labels.txt (val labels with -3), run (a
# gen'd run folder), linked/lmdb (a symbolic link), broken/ (an LMDB folder whose COMPLETE is cut
# short) and log.txt (a caffe train log).
BLANK = "expected a path, not an empty one"
PROBES = [
    # splits
    ("splits --whole-list {t}/missing --subset valid --out {t}/o", "does not exist"),
    ("splits --whole-list {t}/adir --subset valid --out {t}/o", "is a directory"),
    ("splits --whole-list {t}/list.txt --subset test --out {t}/o", "'test' is not one of"),
    ("splits --whole-list {t}/list.txt --subset valid --out {t}/afile", "is a file"),
    ("splits --whole-list {t}/list.txt --subset valid --out {t}/o --classes X", "expected NAME=FILE"),
    ("splits --whole-list {t}/list.txt --subset valid --out {t}/o --classes X=missing.txt", "does not exist"),
    ("splits --whole-list {t}/list.txt --subset valid --out {t}/o --classes X={t}/adir", "is a directory"),
    ("splits --whole-list {t}/list.txt --subset valid --out {t}/o --classes 'X= '", BLANK),
    ("splits --whole-list {t}/list.txt --subset valid --out {t}/o --num-classes 0", "range"),
    ("splits --whole-list {t}/list.txt --subset valid --out {t}/o --num-classes many", "not a valid integer"),
    ("splits --check {t}/afile", "is a file"),
    ("splits --subset valid", "splits needs"),
    ("splits --whole-list '' --subset valid --out {t}/o", BLANK),
    ("splits --whole-list {t}/list.txt --subset valid --out ' '", BLANK),
    ("splits --check ''", BLANK),
    ("splits --whole-list {t}/imagenet999.txt --subset train --out {t}/o", "not ImageNet's 1000"),
    ("splits --whole-list {t}/negative.txt --subset valid --out {t}/o", "negative.txt:2: label -3: expected a class"),
    # lists
    ("lists --train-dir {t}/afile --out {t}/o", "is a file"),
    ("lists --train-dir {t}/missing --out {t}/o", "does not exist"),
    ("lists --train-dir {t}/img --val-dir {t}/afile --out {t}/o", "is a file"),
    ("lists --train-dir {t}/img --val-dir {t}/img --val-labels {t}/adir --out {t}/o", "is a directory"),
    ("lists --train-dir {t}/img --out {t}/afile", "is a file"),
    ("lists --train-dir {t}/img --out {t}/afile/sub", "afile/sub: Not a directory"),  # an OSError, one line
    ("lists --train-dir {t}/img --val-dir {t}/img --devkit {t}/afile --out {t}/o", "is a file"),
    ("lists --train-dir {t}/img --val-dir {t}/img --val-solution {t}/adir --out {t}/o", "is a directory"),
    ("lists --train-dir {t}/img --out ''", BLANK),
    ("lists --train-dir ' ' --out {t}/o", BLANK),
    # prepare
    ("prepare --val-dir {t}/img --out {t}/o", "Missing option '--train-dir'"),
    ("prepare --train-dir {t}/afile --val-dir {t}/img --out {t}/o", "is a file"),
    ("prepare --train-dir {t}/img --val-dir {t}/missing --out {t}/o", "does not exist"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --devkit {t}/afile --out {t}/o", "is a file"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --val-solution {t}/adir --out {t}/o", "is a directory"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --val-labels {t}/missing --out {t}/o", "does not exist"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --out {t}/o --experiments random,bogus", "'bogus': expected"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --out {t}/o --splits 0,7", "'7': expected"),
    ("prepare --train-dir {t}/img --val-dir {t}/img -o {t}/afile", "is a file"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --out {t}/o --resize -1", "range"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --out {t}/o --seed x", "not a valid integer"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --out {t}/o --workers 0", "range"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --out {t}/o --num-classes 1", "range"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --out {t}/o --num-classes all", "not a valid integer"),
    ("prepare --train-dir {t}/img --val-dir {t}/img --out ''", BLANK),
    ("prepare --train-dir {t}/img --val-dir {t}/adir --val-labels {t}/labels.txt --out {t}/o", "'-3' is neither a label"),
    # make-lmdb
    ("make-lmdb {t}/missing {t}/img {t}/o", "does not exist"),
    ("make-lmdb {t}/adir {t}/img {t}/o", "is a directory"),
    ("make-lmdb {t}/list.txt {t}/afile {t}/o", "is a file"),
    ("make-lmdb {t}/list.txt {t}/img {t}/afile", "is a file"),
    ("make-lmdb {t}/list.txt {t}/img {t}/linked", "is a symbolic link"),
    ("make-lmdb {t}/list.txt {t}/img {t}/o --resize -1", "range"),
    ("make-lmdb {t}/list.txt {t}/img {t}/o --resize big", "not a valid integer"),
    ("make-lmdb {t}/list.txt {t}/img {t}/o --seed -1", "range"),
    ("make-lmdb {t}/list.txt {t}/img {t}/o --workers 0", "range"),
    ("make-lmdb {t}/afile {t}/img {t}/o", "afile"),  # not a list
    ("make-lmdb {t}/list.txt {t}/img {t}/broken", "not valid JSON"),  # its COMPLETE record is cut short
    ("make-lmdb {t}/list.txt {t}/img ''", BLANK),
    ("make-lmdb '' {t}/img {t}/o", BLANK),
    ("make-lmdb {t}/negative.txt {t}/img {t}/o", "negative.txt:2: label -3: expected a class index 0 or more"),
    ("make-lmdb {t}/oneclass/files.txt {t}/img {t}/o", "files.txt:1: label 1: expected a class index 0..0"),
    # describe
    ("describe AxB", "unknown treatment"),
    ("describe AnB --n 0 --split 0", "range"),
    ("describe AnB --n three --split 0", "not a valid integer"),
    ("describe AnB --n 3 --split 4", "'4' is not one of"),
    # gen
    ("gen -t AxB --out {t}/o", "unknown treatment"),
    ("gen -t AnB --n 8 --split 0 --out {t}/o", "range"),
    ("gen -t AnB --n 3 --split x --out {t}/o", "is not one of"),
    ("gen -t AnB --n 3 --split 0 --out {t}/afile", "is a file"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --arch vgg", "'vgg' is not one of"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --data-root {t}/afile", "is a file"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --backend hdf5", "'hdf5' is not one of"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --engine tensorrt", "'tensorrt' is not one of"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --cudnn tf32=on", "--cudnn tf32=on: expected 0 or 1"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --fc8-outputs 0", "expected a positive number or 'classes'"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --fc8-outputs wide", "expected a positive number or 'classes'"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver max_iter=abc", "max_iter='abc': expected an integer"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver max_iter=1e3", "max_iter='1e3': expected an integer"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver max_iter=-5", "max_iter='-5': expected a positive"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver max_iter=3000000000", "expected an integer"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver test_iter=0", "expected a positive"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver base_lr=fast", "base_lr='fast': expected a number"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver base_lr=inf", "expected a number"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver momentum=-0.9", "expected a non-negative"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver lr_policy=steps", "expected one of fixed, step"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver max_iters=10", "unknown solver field 'max_iters'"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --solver max_iter", "expected KEY=VALUE"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --base-weights {t}/adir", "is a directory"),
    ("gen -t AnB --n 3 --split 0 --out {t}/o --base-weights '{t}/a" + NL + "b'", "control character"),
    ("gen --out {t}/o", "gen needs --treatment"),
    ("gen --all -t AnB --out {t}/o", "drop --treatment"),
    ("gen --all", "gen --all needs --out DIR"),
    ("gen -t baseA --split 0 --out ''", BLANK),  # it wrote the run's files among the user's own
    ("gen -t baseA --out '  '", BLANK),
    ("gen -t baseA --out {t}/o --data-root ''", BLANK),
    ("gen -t AnB --n 3 --out {t}/o --base-weights ''", BLANK),
    # transplant
    ("transplant {t}/missing", "does not exist"),
    ("transplant {t}/afile", "is a file"),
    ("transplant {t}/adir", "not a run folder"),
    ("transplant {t}/run --base {t}/adir", "is a directory"),
    ("transplant {t}/run --base {t}/missing.caffemodel", "does not exist"),
    ("transplant {t}/run --out {t}/adir", "is a directory"),
    ("transplant {t}/run --seed -1", "range"),
    ("transplant {t}/run --seed x", "not a valid integer"),
    ("transplant ''", BLANK),
    ("transplant {t}/run --out ''", BLANK),
    # train
    ("train {t}/missing", "does not exist"),
    ("train {t}/afile", "is a file"),
    ("train {t}/adir", "not a run folder"),
    ("train {t}/run --gpu -1", "range"),
    ("train {t}/run --gpu one", "not a valid integer"),
    # demo
    ("demo --out {t}/afile", "is a file"),
    ("demo --out {t}/o --preset huge", "'huge' is not one of"),
    ("demo --out {t}/o --workers 0", "range"),
    # plan
    ("plan --out {t}/p --engine fast", "'fast' is not one of"),
    ("plan --out {t}/p --cudnn algo=fast", "--cudnn algo=fast: expected heuristic or measure"),
    ("plan --out {t}/o --experiments natman,everything", "'everything': expected some of"),
    ("plan --out {t}/o --experiments natman,,random", "without empty items"),
    ("plan --out {t}/o --splits 0,5", "'5': expected some of 0, 1, 2, 3"),
    ("plan --out {t}/afile", "is a file"),
    ("plan --out '{t}/o" + NL + "touch {t}/injected'", "control character"),
    ("plan --out {t}/o --arch vgg", "'vgg' is not one of"),
    ("plan --out {t}/o --data-root {t}/afile", "is a file"),
    ("plan --out {t}/o --backend hdf5", "is not one of"),
    ("plan --out {t}/o --fc8-outputs -3", "expected a positive number"),
    ("plan --out {t}/o --fc8-outputs ²", "expected a positive number"),
    ("plan --out {t}/o --solver max_iter=1e3", "expected an integer"),
    ("plan --out {t}/o --iter-seconds 0", "range"),
    ("plan --out {t}/o --iter-seconds nan", "expected a finite number"),
    ("plan --out {t}/o --iter-seconds slow", "not a valid float"),
    ("plan --out {t}/o --gpus 0", "range"),
    ("plan --out {t}/o --scheduler pbs", "'pbs' is not one of"),
    ("plan --out {t}/o --scheduler slurm --cpus-per-task 0", "range"),
    ("plan --out {t}/o --scheduler slurm --grace -5", "range"),
    ("plan --out {t}/o --scheduler slurm '--sbatch-arg=--time=1" + NL + "touch {t}/injected'", "control character"),
    ("plan --out ''", BLANK),
    # run-all, status
    ("run-all {t}/missing", "does not exist"),
    ("run-all {t}/afile", "is a file"),
    ("run-all {t}/adir", "has no plan.json"),
    ("run-all {t}/adir --gpus 0,x", "expected distinct comma-separated GPU ids"),
    ("run-all {t}/adir --gpus 0,0", "expected distinct comma-separated GPU ids"),
    ("run-all {t}/adir --gpus -1", "expected distinct comma-separated GPU ids"),
    ("run-all {t}/adir --gpus ²", "expected distinct comma-separated GPU ids"),
    ("run-all {t}/adir --cpu-workers 0", "range"),
    ("run-all {t}/adir --gpus 0 --cpu-workers 2", "not both"),
    ("status {t}/missing", "does not exist"),
    ("status {t}/afile", "is a file"),
    ("status {t}/adir", "has no plan.json"),
    # parse-log
    ("parse-log {t}/missing.log", "does not exist"),
    ("parse-log {t}/adir", "is a directory"),
    ("parse-log {t}/log.txt --csv {t}/missing/out", "missing' does not exist"),
    ("parse-log {t}/log.txt --csv {t}/afile/out", "afile' is a file"),
    # report
    ("report {t}/missing", "does not exist"),
    ("report {t}/afile", "is a file"),
    ("report {t}/adir", "no run folders"),
    ("report {t} --out {t}/afile", "is a file"),
    ("report {t} --json {t}/adir", "is a directory"),
    ("report {t} --json ''", BLANK),
    ("parse-log {t}/log.txt --csv ''", BLANK),
    ("demo --out ''", BLANK),
    ("--bogus", "No such option '--bogus'"),
    ("nosuch", "No such command 'nosuch'"),
    # several nets per GPU, and the GPU check's rates (#24)
    ("plan --out {t}/o --nets-per-gpu 0", "range"),
    ("plan --out {t}/o --nets-per-gpu two", "not a valid integer"),
    ("plan --out {t}/o --data-threads -1", "range"),
    ("plan --out {t}/o --data-threads 65", "range"),
    ("plan --out {t}/o --rates {t}/missing.json", "does not exist"),
    ("plan --out {t}/o --rates {t}/adir", "is a directory"),
    ("plan --out {t}/o --rates {t}/log.txt", "is not the GPU check's JSON"),
    ("plan --out {t}/o --rates ''", BLANK),
    ("run-all {t}/adir --nets-per-gpu 0", "range"),
    ("run-all {t}/adir --nets-per-gpu x", "not a valid integer"),
]


def runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click 8.2 keeps stderr apart


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its content's hash (links by target, folders by name)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory, pb2) -> Path:
    import cv2

    t = tmp_path_factory.mktemp("user")
    (t / "afile").write_text("not a list\n")
    (t / "adir").mkdir()
    (t / "img" / "c0").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(t / "img" / "c0" / f"{i}.png"), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    (t / "list.txt").write_text("".join(f"c0/{i}.png 0\n" for i in range(3)))
    (t / "negative.txt").write_text("c0/0.png 0\nc0/1.png -3\n")
    (t / "oneclass").mkdir()
    (t / "oneclass" / "files.txt").write_text("c0/0.png 1\n")
    (t / "oneclass" / "idxmap.txt").write_text("# Orig_idx new_idx\n7 0\n")
    (t / "imagenet999.txt").write_text("".join(f"train/n{c:08d}/n{c:08d}_1.JPEG {c}\n" for c in range(999)))
    (t / "labels.txt").write_text("0.png -3\n")
    gen.write_runs({t / "run": parse("half0A")}, gen.GenOptions(arch="small", gpu=False, solver={"max_iter": 10}))
    (t / "elsewhere").mkdir()
    (t / "linked").mkdir()
    (t / "linked" / "lmdb").symlink_to(t / "elsewhere")
    (t / "broken" / "lmdb").mkdir(parents=True)
    (t / "broken" / "lmdb" / "caffe-transfer-settings.json").write_text("{}")  # make-lmdb's own folder
    (t / "broken" / "COMPLETE").write_text('{"written": 3, "skip')
    (t / "log.txt").write_text("I1130 10:00:00.000000  1 solver.cpp:218] Iteration 0 (0 iter/s, 0s/20 iters), loss = 2.3\n")
    _bundles(t / "bundles")
    return t


def _bundles(root: Path) -> None:
    """Bundles as install_caffe.sh --bundle writes them (SHA256SUMS over source/, debs/, wheels/),
    each spoilt one way after its sums were written."""
    for name in ("altered", "truncated", "missing", "extra"):
        bundle = root / name
        for folder in ("source", "debs", "wheels"):
            (bundle / folder).mkdir(parents=True)
        (bundle / "source" / "caffe.dsc").write_text("Format: 3.0 (quilt)\n")
        (bundle / "debs" / "libfoo.deb").write_bytes(b"!<arch>\n" + bytes(range(256)))
        sums = subprocess.run(["sha256sum", "source/caffe.dsc", "debs/libfoo.deb"], cwd=bundle, capture_output=True,
                              text=True, check=True).stdout
        (bundle / "SHA256SUMS").write_text(sums)
    (root / "altered" / "source" / "caffe.dsc").write_text("Format: 1.0\n")
    (root / "truncated" / "debs" / "libfoo.deb").write_bytes(b"!<arch>\n")
    (root / "missing" / "debs" / "libfoo.deb").unlink()
    (root / "extra" / "debs" / "extra.deb").write_bytes(b"!<arch>\n")


def assert_one_line_error(result, fragment: str) -> None:
    err = result.stderr
    assert result.exit_code not in (0, None), result.output
    assert isinstance(result.exception, SystemExit), f"not a clean exit: {result.exception!r}"
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("Error: "), err
    assert fragment in err, err


@pytest.mark.parametrize("line,fragment", PROBES, ids=[p[0].split(" --")[0][:60] + " | " + p[1] for p in PROBES])
def test_bad_value_is_one_line_and_changes_nothing(tree, line, fragment):
    before = snapshot(tree)
    args = [a.replace("{t}", str(tree)) for a in shlex.split(line)]
    result = runner().invoke(cli, args)
    assert_one_line_error(result, fragment)
    assert snapshot(tree) == before


def test_every_command_and_option_with_a_value_is_probed():
    """The table above covers each option that takes a value, of every command."""
    probed = {(line.split(" ")[0], word.split("=")[0]) for line, _ in PROBES for word in shlex.split(line)
              if word.startswith("-")}
    commands_probed = {line.split(" ")[0] for line, _ in PROBES}
    missing = []
    for name, command in cli.commands.items():
        takes_values = [p for p in command.params if not getattr(p, "is_flag", False)
                        and p.name not in ("help",)]
        if takes_values and name not in commands_probed:
            missing.append(name)
        for p in takes_values:
            if p.param_type_name == "option" and not any((name, o) in probed for o in p.opts):
                missing.append(f"{name} {p.opts[-1]}")
    assert not missing, f"options with no row in PROBES (add their bad values): {', '.join(missing)}"


def test_every_path_the_cli_takes_refuses_an_empty_or_blank_one():
    """One parameter type owns paths (cli.types.PathType): every path option and argument of
    every command refuses '' and '  ', which the OS reads as the current folder."""
    import click

    from caffe_transfer.cli.types import PathType

    paths = [(name, p) for name, command in cli.commands.items() for p in command.params
             if isinstance(p.type, click.Path)]
    assert len(paths) > 30, paths
    assert not [f"{name} {p.name}" for name, p in paths if not isinstance(p.type, PathType)]
    for name, p in paths:
        for value in ("", "  "):
            with pytest.raises(click.BadParameter, match=BLANK):
                p.type.convert(value, p, click.Context(cli.commands[name]))


# --- environment variables ---------------------------------------------------------------------
class EnvProbe(NamedTuple):
    """A bad value of an environment variable, and a command that reads it: as PROBES, one line
    naming it, a non-zero exit, nothing of the tree changed."""

    variable: str
    value: str     # {t}: the user's tree
    command: str   # `caffe-transfer ...`, or a script run from the checkout (tools/x.sh, {t}/run/run.sh)
    fragment: str  # {t} as above


ENV_PROBES = [
    EnvProbe("CAFFE_ROOT", "{t}/missing", "caffe-transfer doctor", "CAFFE_ROOT={t}/missing: no such folder"),
    EnvProbe("CAFFE_ROOT", "{t}/afile", "{t}/run/run.sh", "CAFFE_ROOT={t}/afile: no such folder"),
    EnvProbe("CAFFE", "{t}/afile", "{t}/run/run.sh", "CAFFE={t}/afile: expected the path of Caffe's caffe binary"),
    EnvProbe("FASHION_MNIST_DIR", "{t}/adir", "caffe-transfer demo --preset quick --out {t}/o",
             "{t}/adir/train-images-idx3-ubyte.gz is missing"),
    *(EnvProbe("CAFFE_DATA_THREADS", bad, command, f"CAFFE_DATA_THREADS={bad}: expected a whole number from 0")
      for bad in ("two", "-1", "65", "", "1.5") for command in ("caffe-transfer train {t}/run", "{t}/run/run.sh")),
    EnvProbe("CAFFE_CUDA", "maybe", "tools/install_caffe.sh", "CAFFE_CUDA=maybe: expected auto, 0 or 1"),
    EnvProbe("CAFFE_CUDNN", "2", "tools/install_caffe.sh", "CAFFE_CUDNN=2: expected auto, 0 or 1"),
    EnvProbe("PYTHON", "{t}/missing", "tools/install_caffe.sh", "PYTHON={t}/missing: no such interpreter"),
    EnvProbe("JOBS", "many", "tools/install_caffe.sh", "JOBS=many: expected a positive number"),
    EnvProbe("JOBS", "0", "tools/install_caffe.sh", "JOBS=0: expected a positive number"),
    EnvProbe("CUDA_ARCH_BIN", "sm_80", "tools/install_caffe.sh", "sm_80 is not a compute capability"),
    EnvProbe("CUDA_ARCH_PTX", "9x", "tools/install_caffe.sh", 'CUDA_ARCH_PTX="9x": 9x is not a compute capability'),
    EnvProbe("EXTRAS", "[test]", "tools/setup.sh", "EXTRAS=[test]: expected extras such as test"),
    EnvProbe("CUDNN_ROOT", "{t}/missing", "tools/install_caffe.sh", "CUDNN_ROOT={t}/missing: no such folder"),
    EnvProbe("BUNDLE_PYTHON", "three", "tools/install_caffe.sh --bundle {t}/o", "BUNDLE_PYTHON=three: expected"),
    EnvProbe("VENV", "{t}/afile", "tools/setup.sh", "VENV={t}/afile: not a folder"),
    EnvProbe("VENV", "{t}/afile", "tools/demo.sh", "VENV={t}/afile: not a folder"),  # it sets up first
    EnvProbe("PYTHON_BASE", "{t}/missing", "tools/setup.sh", "PYTHON_BASE={t}/missing: no such interpreter"),
]
# Variables read that no row probes, each with the reason.
NOT_PROBED = {
    "SLURM_RESTART_COUNT": "set by SLURM when it requeues a job",
    "CAFFE_TRANSFER_REFERENCE": "read by the tests only: where the authors' files are not, the tests that need them "
                                "skip and name the folder",
    "BUNDLE_WHEELS": "pip requirements for --bundle: pip download checks them, which needs the network",
    "DOCKER_BASE": "test tooling (tools/docker_local.sh): the base image's name, which docker checks",
    "SLURM_LOCAL": "test tooling (tools/slurm_local.sh): the folder of the local test cluster",
    "CACHE": "not a setting: install_caffe.sh sets it itself (the bundle's source/, else CAFFE_ROOT/cache)",
}
# Where the package, the scripts and the templates read the environment: Python's os.environ
# reads, and the shell's ${NAME:-default} (or :=, :?) forms, which say a setting may come from
# outside (${NAME:+...} only extends a variable such as CPATH).
ENV_SOURCES = ("caffe_transfer/**/*.py", "tools/*.py", "tools/*.sh", "templates/*", "tests/conftest.py",
               "Dockerfile")
ENV_READS = (re.compile(r'os\.(?:environ\.get|getenv)\(\s*"([A-Z][A-Z0-9_]*)"'),
             re.compile(r'os\.environ\["([A-Z][A-Z0-9_]*)"\](?!\s*=[^=])'),
             re.compile(r"\$\{([A-Z][A-Z0-9_]*):?[-=?]"))


def environment_read() -> dict[str, list[str]]:
    """Each variable the checkout reads, with the files that read it."""
    found: dict[str, set[str]] = {}
    for pattern in ENV_SOURCES:
        for path in REPO.glob(pattern):
            if path.is_file():
                for regex in ENV_READS:
                    for name in regex.findall(path.read_text(errors="replace")):
                        found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return {name: sorted(files) for name, files in found.items()}


def test_every_environment_variable_read_is_probed():
    read = environment_read()
    assert {"CAFFE_ROOT", "CAFFE_CUDA", "FASHION_MNIST_DIR"} <= set(read), read  # the scan finds them
    probed = {p.variable for p in ENV_PROBES}
    missing = [f"{name} (read in {', '.join(files)})" for name, files in sorted(read.items())
               if name not in probed and name not in NOT_PROBED]
    assert not missing, ("environment variables with no row in ENV_PROBES (add their bad values) or reason in "
                         f"NOT_PROBED: {'; '.join(missing)}")
    gone = sorted((probed | set(NOT_PROBED)) - set(read))
    assert not gone, f"rows for variables nothing reads any more: {gone}"


# The scripts' own options that take a value: (command line run from the checkout, fragment).
SCRIPT_PROBES = [
    ("tools/install_caffe.sh --bundle ''", "--bundle needs a folder"),
    ("tools/install_caffe.sh --from {t}/missing", "--from {t}/missing: expected the folder a --bundle run wrote"),
    ("tools/install_caffe.sh --from", "expected the folder a --bundle run wrote"),
    ("tools/install_caffe.sh --frm {t}/adir", "unknown argument --frm: expected --bundle DIR or --from DIR"),
    ("tools/gpu_check.sh --bundle {t}/adir", "expected --bundle DIR --out DIR"),
    ("tools/gpu_check.sh --bundle {t}/adir --out ''", "expected --bundle DIR --out DIR"),
    ("tools/gpu_check.sh --bundel {t}/adir --out {t}/o", "unknown argument --bundel"),
    ("tools/gpu_check.sh --bundle {t}/adir --out {t}/o", "no GPU visible (no nvidia-smi): run this on a GPU machine"),
    ("tools/gpu_check.sh --installed --out {t}/o", "no GPU visible (no nvidia-smi)"),
    ("tools/gpu_check.sh --installed --bundle {t}/adir --out {t}/o", "--installed builds nothing"),
    ("tools/install_caffe.sh --from {t}/bundles/altered", "--from {t}/bundles/altered: files do not match its SHA256SUMS"),
    ("tools/install_caffe.sh --from {t}/bundles/truncated", "--from {t}/bundles/truncated: files do not match"),
    ("tools/install_caffe.sh --from {t}/bundles/missing", "--from {t}/bundles/missing: files do not match"),
    ("tools/install_caffe.sh --from {t}/bundles/extra", "debs/extra.deb not listed in its SHA256SUMS"),
    ("tools/install_caffe.sh --from {t}/adir", "--from {t}/adir: no SHA256SUMS there"),
]


def script_options() -> list[tuple[str, str]]:
    """(script, option) for each option of tools/*.sh that takes a value (its case branch reads $2)."""
    return [(str(path.relative_to(REPO)), m[1]) for path in sorted(REPO.glob("tools/*.sh"))
            for m in re.finditer(r"^\s*(--[a-z][a-z-]*)\)(.*)$", path.read_text(), re.M) if "${2" in m[2]]


def test_every_script_option_with_a_value_is_probed():
    assert ("tools/install_caffe.sh", "--from") in script_options()  # the scan finds them
    probed = {(words[0], word) for line, _ in SCRIPT_PROBES for words in [shlex.split(line)] for word in words}
    missing = [f"{script} {option}" for script, option in script_options() if (script, option) not in probed]
    assert not missing, f"script options with no row in SCRIPT_PROBES (add their bad values): {', '.join(missing)}"


def _run_outside(tree: Path, command: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """A command line as a user runs it from the checkout: the installed caffe-transfer, or a
    script with bash; nothing of the tree changed, one line on stderr, exit 1 or 2."""
    before = snapshot(tree)
    words = shlex.split(command.replace("{t}", str(tree)))
    if words[0] == "caffe-transfer":
        words[0] = str(Path(sys.executable).parent / "caffe-transfer")
    else:
        words.insert(0, "bash")
    base = {**os.environ, "VENV": str(Path(sys.executable).parent.parent)}
    if "install_caffe" in command:
        base["CAFFE_ROOT"] = str(tmp_path / "caffe")  # were a check to let a value through: not /opt/caffe
    proc = subprocess.run(words, cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (1, 2), (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert snapshot(tree) == before
    return proc


@pytest.mark.parametrize("probe", ENV_PROBES, ids=[f"{p.variable}={p.value} {p.command.split()[0]}" for p in ENV_PROBES])
def test_a_bad_environment_variable_is_one_line_and_changes_nothing(tree, probe, tmp_path):
    proc = _run_outside(tree, probe.command, {probe.variable: probe.value.replace("{t}", str(tree))}, tmp_path)
    assert probe.fragment.replace("{t}", str(tree)) in proc.stderr, proc.stderr


@pytest.mark.parametrize("line,fragment", SCRIPT_PROBES, ids=[p[0] for p in SCRIPT_PROBES])
def test_a_bad_script_option_is_one_line_and_changes_nothing(tree, line, fragment, tmp_path):
    proc = _run_outside(tree, line, {}, tmp_path)
    assert fragment.replace("{t}", str(tree)) in proc.stderr, proc.stderr


# --- what the table cannot show --------------------------------------------------------------
@pytest.fixture
def read_only(tmp_path):
    """A folder nothing can be written into, root included (an immutable folder where chmod is
    not enough)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a filesystem without chattr +i: no folder is read-only")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


@pytest.mark.parametrize("line", [
    "lists --train-dir {t}/img --out {ro}/lists",
    "parse-log {t}/log.txt --csv {ro}/log",
    "report {t} --out {ro}/report",
])
def test_a_read_only_folder_is_one_line_naming_the_path(tree, read_only, line):
    before = snapshot(tree)
    args = [a.format(t=tree, ro=read_only) for a in line.split(" ")]
    result = runner().invoke(cli, args)
    assert_one_line_error(result, f"{read_only}/")
    assert result.exit_code == 1 and ("Permission denied" in result.stderr or "not permitted" in result.stderr)
    assert snapshot(tree) == before and not any(read_only.iterdir())


def test_report_lists_unreadable_run_folders_with_the_reason_and_writes_the_rest(tree, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    os.symlink(tree / "run", results / "half0A")
    for name, text in (("notjson", "{half0B"), ("notobject", "[1, 2]"), ("nokeys", '{"name": "half0B"}')):
        (results / name).mkdir()
        (results / name / "treatment.json").write_text(text)
    result = runner().invoke(cli, ["report", str(results), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report" / "report.txt").read_text()
    assert "notjson: treatment.json is not readable JSON" in text
    assert "notobject: treatment.json holds a list, not gen's JSON object" in text
    assert "nokeys: treatment.json has no valid name and solver.max_iter (KeyError: 'solver')" in text
    assert [r["name"] for r in json.loads((tmp_path / "report" / "report.json").read_text())["runs"]] == ["half0A"]


def test_make_lmdb_of_no_readable_image_says_so(tree, tmp_path):
    (tmp_path / "gone.txt").write_text("c0/gone.png 0\nc0/lost.png 0\n")
    result = runner().invoke(cli, ["make-lmdb", str(tmp_path / "gone.txt"), str(tree / "img"), str(tmp_path / "db")])
    assert result.exit_code == 1
    last = result.stderr.splitlines()[-1]  # above it, each skipped image is named as it goes
    assert "none of the 2 images of" in last and "could be read" in last and "mixed sizes" not in result.output


def test_a_misspelt_field_in_a_template_fails_at_gen(tmp_path, monkeypatch):
    from caffe_transfer.common import resources

    templates = tmp_path / "templates"
    shutil.copytree(resources.resource_dir("templates"), templates)
    net = templates / "_net.j2"
    net.write_text(net.read_text().replace('name: "', 'nmae: "'))
    monkeypatch.setattr(resources, "resource_dir", lambda name: templates)
    result = runner().invoke(cli, ["gen", "-t", "half0A", "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "train_val.prototxt as rendered: not a valid NetParameter")
    assert "nmae" in result.stderr and not (tmp_path / "run").exists()


def test_solver_values_are_written_as_caffe_types_them(tmp_path, pb2):
    from google.protobuf import text_format

    result = runner().invoke(cli, ["gen", "-t", "half0A", "--out", str(tmp_path / "run"), "--solver", "max_iter=100",
                                   "--solver", "base_lr=1e-3", "--solver", "random_seed=-1"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "run" / "solver.prototxt").read_text()
    assert "max_iter: 100\n" in text and "base_lr: 0.001\n" in text and "random_seed: -1\n" in text
    solver = text_format.Parse(text, pb2.SolverParameter())
    assert (solver.max_iter, solver.random_seed) == (100, -1)


def test_write_slurm_refuses_a_control_character_and_writes_nothing(tmp_path):
    runs = [PlanRun("half0A", None, 10)]
    for plan_dir, args in ((tmp_path / "a\nb", ()), (tmp_path / "ok", ("--time=1\rtouch x",))):
        with pytest.raises(CaffeTransferError, match="control character"):
            write_slurm(plan_dir, runs, gpu=False, sbatch_args=args)
        assert not plan_dir.exists()


def test_submit_sh_keeps_an_odd_plan_path_in_its_line(tmp_path, pb2):
    """Quotes, $() and spaces in the plan folder: sbatch gets the scripts, nothing else runs."""
    out = tmp_path / "it's $(touch INJECTED) `touch INJECTED` plan"
    result = runner().invoke(cli, ["plan", "--experiments", "natman", "--arch", "small", "--cpu", "--out", str(out),
                                   "--scheduler", "slurm", "--sbatch-arg=--comment=$(touch INJECTED)"])
    assert result.exit_code == 0, result.output
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "$@" >> "$SBATCH_CALLS"\necho 7\n')
    (bin_dir / "sbatch").chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_CALLS": str(calls)}
    proc = subprocess.run(["bash", str(out / "slurm" / "submit.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert calls.read_text().splitlines()[0] == "--parsable first.sbatch"
    assert len(calls.read_text().splitlines()) == 3  # first, then the transfers of each natman base
    assert not list(tmp_path.rglob("INJECTED"))
    sbatch = (out / "slurm" / "first.sbatch").read_text()
    assert "#SBATCH --comment=$(touch INJECTED)\n" in sbatch  # sbatch reads it as a comment's text


def test_boundary_turns_os_json_and_lmdb_errors_into_one_line():
    import lmdb

    from caffe_transfer.cli import one_line

    assert one_line(FileNotFoundError(2, "No such file or directory", "/x/y")) == "/x/y: No such file or directory"
    try:
        json.loads("{")
    except json.JSONDecodeError as e:
        assert one_line(e).startswith("a file is not valid JSON: Expecting property name")
    assert one_line(lmdb.InvalidError("/d/lmdb: MDB_INVALID: File is not an LMDB file")) == \
        "LMDB: /d/lmdb: MDB_INVALID: File is not an LMDB file"
    assert one_line(KeyError("bug")) is None


def test_an_unexpected_error_keeps_its_traceback_with_a_note(monkeypatch, capsys, tmp_path):
    from caffe_transfer import cli as cli_module
    from caffe_transfer.runs import gen as gen_module

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(gen_module, "write_runs", broken)
    monkeypatch.setattr(sys, "argv", ["caffe-transfer", "gen", "-t", "half0A", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exit_:
        cli_module.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    assert "Traceback" in err and "KeyError: 'a bug'" in err and err.rstrip().endswith(cli_module.BUG_NOTE)


@pytest.mark.slow
def test_a_full_disk_during_train_shows_caffes_error_first(tmp_path, pb2):
    """The run folder on a tmpfs with 112 kB left once gen has written it: room for Caffe's log of
    the nets, not for its snapshots (64 to 160 kB left all show it), so Caffe cannot write one, and
    then status.json cannot be written either; the one line leads with Caffe's error. The room is
    what is left, not the tmpfs's size, so that a longer run.sh does not change what it shows."""
    from tests.conftest import make_data_root

    data = make_data_root(tmp_path / "data", {"half0A_train", "half0A_valid"}, 32, 8, 3, pb2)
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        gen.write_runs({disk / "run": parse("half0A")}, gen.GenOptions(
            arch="small", data_root=data, fc8_outputs=3, gpu=False,
            solver={"max_iter": 20, "snapshot": 10, "test_interval": 10, "test_iter": 1, "display": 5}))
        st = os.statvfs(disk)
        used_kb = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
        subprocess.run(["mount", "-o", f"remount,size={used_kb + 112}k", str(disk)], check=True)
        proc = subprocess.run([str(Path(sys.executable).parent / "caffe-transfer"), "train", str(disk / "run"), "--quiet"],
                              capture_output=True, text=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error: caffe train of half0A failed")
    assert "Check failed: proto.SerializeToOstream" in proc.stderr
    assert proc.stderr.rstrip().endswith(f"(and then: {disk}/run/status.json: No space left on device)")


def test_a_reader_that_stops_early_ends_the_output_quietly():
    """`caffe-transfer describe ... | head -1`: the closed pipe is the reader's choice, not an error
    to print (it printed "Error: Broken pipe")."""
    proc = subprocess.Popen([str(Path(sys.executable).parent / "caffe-transfer"), "describe", "AnB", "--n", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the command has written anything: it starts in about a second
    assert proc.stderr.read() == "" and proc.wait(timeout=60) == 1
