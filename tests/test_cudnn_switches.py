"""The cuDNN switches (tools/caffe_fixes/cudnn_switches.hpp) as Caffe parses them: a CUDA build
cannot run here, so a small C++ program compiles the very header the patched layers include and
prints what it parsed; a bad value stops it with one FATAL line, as it stops Caffe. The slow test
applies the installer's CUDA fixes to the pinned source and compiles the patched translation
units against cuDNN 9's headers (NVIDIA's nvidia-cudnn-cu13 wheel) with nvcc. Then the Python
side: gen --cudnn records them, run.sh exports exactly the record, the report shows them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffe_transfer.cli import cli
from caffe_transfer.results import report

REPO = Path(__file__).resolve().parent.parent
FIXES = REPO / "tools" / "caffe_fixes"
DEFAULTS = {"CAFFE_CUDNN_WORKSPACE_MB": "8", "CAFFE_CUDNN_ALGO": "heuristic",
            "CAFFE_CUDNN_DETERMINISTIC": "0", "CAFFE_TF32": "0"}

PROGRAM = r"""
#include <iostream>
#include "cudnn_switches.hpp"
int main(int, char** argv) {
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = 1;
  const caffe::CudnnSwitches& s = caffe::CudnnSwitches::Get();
  std::cout << s.Describe() << " bytes=" << s.workspace_bytes() << std::endl;
  return 0;
}
"""


@pytest.fixture(scope="module")
def switches(tmp_path_factory):
    """Runs the compiled program under the given switches: (exit status, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("switches")
    (folder / "main.cpp").write_text(PROGRAM)
    subprocess.run(["g++", "-std=c++11", "-Wall", "-Werror", "-I", str(FIXES), "main.cpp", "-o", "switches",
                    "-lglog"], cwd=folder, check=True)

    def run(values: dict[str, str]) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in DEFAULTS} | values
        return subprocess.run([str(folder / "switches")], env=env, capture_output=True, text=True)

    return run


@pytest.mark.parametrize("values", [
    {},
    {name: "" for name in DEFAULTS},  # empty is unset
    dict(DEFAULTS),
    {"CAFFE_CUDNN_WORKSPACE_MB": "1024", "CAFFE_CUDNN_ALGO": "measure"},
    {"CAFFE_CUDNN_DETERMINISTIC": "1"},
    {"CAFFE_TF32": "1", "CAFFE_CUDNN_WORKSPACE_MB": "0"},
    {"CAFFE_CUDNN_WORKSPACE_MB": "1048576", "CAFFE_CUDNN_ALGO": "measure", "CAFFE_CUDNN_DETERMINISTIC": "1",
     "CAFFE_TF32": "1"},
])
def test_good_values_are_what_caffe_runs_under(switches, values):
    run = switches(values)
    assert run.returncode == 0, run.stderr
    expected = DEFAULTS | {k: v for k, v in values.items() if v}
    mib = int(expected["CAFFE_CUDNN_WORKSPACE_MB"])
    assert run.stdout.split() == [f"{k}={v}" for k, v in expected.items()] + [f"bytes={mib << 20}"]


@pytest.mark.parametrize("name, value", [
    ("CAFFE_CUDNN_WORKSPACE_MB", "8MB"),
    ("CAFFE_CUDNN_WORKSPACE_MB", "-1"),
    ("CAFFE_CUDNN_WORKSPACE_MB", " 8"),
    ("CAFFE_CUDNN_WORKSPACE_MB", "1e3"),
    ("CAFFE_CUDNN_WORKSPACE_MB", "1048577"),
    ("CAFFE_CUDNN_WORKSPACE_MB", "18446744073709551617"),  # 2**64 + 1: no wrap-around
    ("CAFFE_CUDNN_ALGO", "fastest"),
    ("CAFFE_CUDNN_ALGO", "Measure"),
    ("CAFFE_CUDNN_DETERMINISTIC", "yes"),
    ("CAFFE_CUDNN_DETERMINISTIC", "2"),
    ("CAFFE_TF32", "true"),
])
def test_a_bad_value_stops_caffe_with_one_line(switches, name, value):
    run = switches({name: value})
    assert run.returncode != 0 and run.stdout == ""
    fatal = [line for line in run.stderr.splitlines() if line[:1] == "F" and line[1:5].isdigit()]
    assert len(fatal) == 1, run.stderr
    assert fatal[0].split("] ", 1)[1].startswith(f"{name}={value}: expected ")


def _cudnn_wheel() -> Path | None:
    spec = importlib.util.find_spec("nvidia.cudnn") if importlib.util.find_spec("nvidia") else None
    return Path(next(iter(spec.submodule_search_locations))) if spec else None


@pytest.mark.slow
def test_patched_layers_compile_against_cudnn9(tmp_path):
    """What every cuDNN build compiles, here without building Caffe: the installer's own
    apply_cuda_fixes on the pinned source, then the changed translation units."""
    dsc = Path(os.environ.get("CAFFE_ROOT", "/opt/caffe")) / "cache" / "caffe_1.0.0+git20180821.99bd997-8.dsc"
    cudnn = _cudnn_wheel()
    if not (dsc.is_file() and shutil.which("nvcc") and cudnn and shutil.which("protoc")):
        pytest.skip(f"needs {dsc}, nvcc, protoc and nvidia-cudnn-cu13 in {sys.executable}'s environment")
    src = tmp_path / "src"
    subprocess.run(["dpkg-source", "--no-check", "-x", str(dsc), str(src)], check=True, capture_output=True)
    script = ('die() { echo "$*" >&2; exit 1; }; log() { :; }; . tools/caffe_cuda.sh; '
              'CUDNN_VERSION=9 CUDNN_HEADER=$1 apply_cuda_fixes "$2"')
    subprocess.run(["bash", "-c", script, "-", str(cudnn / "include" / "cudnn_version.h"), str(src)],
                   cwd=REPO, check=True, env=os.environ | {"HERE": str(REPO / "tools")})
    (tmp_path / "gen" / "caffe" / "proto").mkdir(parents=True)
    subprocess.run(["protoc", f"--cpp_out={tmp_path}/gen/caffe/proto", "-Isrc/caffe/proto",
                    "src/caffe/proto/caffe.proto"], cwd=src, check=True)
    includes = ["-Iinclude", f"-I{tmp_path}/gen", f"-I{cudnn}/include"]
    cublas = cudnn.parent / "cu13" / "include"  # cublas_v2.h, curand.h where the toolkit has none
    includes += [f"-I{cublas}"] if cublas.is_dir() else []
    for unit in ("src/caffe/layers/cudnn_conv_layer.cpp", "src/caffe/common.cpp",
                 "src/caffe/layers/cudnn_conv_layer.cu", "src/caffe/layer_factory.cpp"):  # the last: the header
        run = subprocess.run(["nvcc", "-c", "-O2", "-gencode", "arch=compute_90,code=sm_90", "-DUSE_CUDNN",
                              "-DUSE_LMDB", "-DUSE_OPENCV", "-DNDEBUG", "-Xcompiler", "-Wall,-Wno-sign-compare,"
                              "-Wno-uninitialized,-Wno-switch", *includes, unit, "-o", str(tmp_path / "unit.o")],
                             cwd=src, capture_output=True, text=True)
        assert run.returncode == 0 and "warning" not in run.stderr, f"{unit}:\n{run.stderr[-3000:]}"


def _exports(run_sh: Path) -> dict[str, str]:
    """The CAFFE_* variables run.sh's own export lines give Caffe, as bash reads them."""
    lines = [line for line in run_sh.read_text().splitlines() if line.startswith("export CAFFE_")]
    script = "\n".join(lines + ['env -0'])
    out = subprocess.run(["env", "-i", "bash", "-c", script], capture_output=True, text=True, check=True).stdout
    pairs = (item.split("=", 1) for item in out.split("\0") if item)
    return {k: v for k, v in pairs if k.startswith("CAFFE_")}


def test_gen_records_the_switches_run_sh_exports_them_and_the_report_shows_them(tmp_path):
    runs = tmp_path / "runs"
    args = ["gen", "-t", "AnB", "--n", "3", "--split", "0"]
    switched = args + ["--out", str(runs / "transfer0A0B_3"), "--cudnn", "algo=measure", "--cudnn",
                       "workspace_mb=1024", "--cudnn", "tf32=1"]
    for command in (switched, args + ["--out", str(runs / "plain")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 0, result.output
    recorded = {"CAFFE_CUDNN_ALGO": "measure", "CAFFE_CUDNN_WORKSPACE_MB": "1024", "CAFFE_TF32": "1"}
    assert json.loads((runs / "transfer0A0B_3" / "treatment.json").read_text())["cudnn"] == recorded
    assert json.loads((runs / "plain" / "treatment.json").read_text())["cudnn"] == {}
    every = dict.fromkeys(DEFAULTS, "")
    assert _exports(runs / "transfer0A0B_3" / "run.sh") == every | recorded
    assert _exports(runs / "plain" / "run.sh") == every  # empty: Caffe's default, whatever the caller set

    summary = report.write_report(runs, tmp_path / "report", figures=False, compare=False)
    shown = {r["name"]: r["cudnn"] for r in summary["runs"]}
    assert shown == {"plain": "", "transfer0A0B_3": " ".join(f"{k}={v}" for k, v in recorded.items())}
    rows = (tmp_path / "report" / "runs.csv").read_text().splitlines()
    assert rows[0].endswith(",cudnn") and rows[2].endswith(shown["transfer0A0B_3"])
    text = (tmp_path / "report" / "report.txt").read_text()
    assert "transfer0A0B_3" in text.split("Runs under cuDNN switches")[1].splitlines()[1]


@pytest.mark.parametrize("value, expected", [
    ("algo=fast", "--cudnn algo=fast: expected heuristic or measure"),
    ("speed=1", "--cudnn speed: expected one of workspace_mb, algo, deterministic, tf32"),
    ("workspace_mb=8MB", "--cudnn workspace_mb=8MB: expected a whole number of MiB from 0 to 1048576"),
    ("workspace_mb=1048577", "expected a whole number of MiB"),
    ("tf32=yes", "--cudnn tf32=yes: expected 0 or 1"),
    ("deterministic", "'deterministic': expected KEY=VALUE, e.g. algo=measure"),
])
def test_a_bad_cudnn_switch_is_one_line_and_writes_nothing(tmp_path, value, expected):
    for command in (["gen", "-t", "AnB", "--n", "3", "--split", "0"], ["plan"]):
        result = CliRunner().invoke(cli, [*command, "--out", str(tmp_path / "o"), "--cudnn", value])
        assert result.exit_code == 2 and expected in result.output, result.output
        assert result.output.strip().splitlines()[-1].startswith("Error: Invalid value for '--cudnn'")
        assert not (tmp_path / "o").exists()
