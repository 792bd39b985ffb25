"""Plans of the grid, their cost, and run-all on real Caffe (CPU, small net, tiny data)."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffe_transfer.cli import cli
from caffe_transfer.grid import plan
from caffe_transfer.model.treatments import authors_grid
from caffe_transfer.runs.folder import Run
from caffe_transfer.runs.train import HEADER

from .conftest import natman_plan

CLI = str(Path(sys.executable).parent / "caffe-transfer")


def test_full_plan_equals_gen_all_and_has_one_base_per_transfer(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["gen", "--all", "--out", str(tmp_path / "same")]).exit_code == 0
    (tmp_path / "same").rename(tmp_path / "gen")
    result = runner.invoke(cli, ["plan", "--out", str(tmp_path / "same"), "--iter-seconds", "0.162", "--gpus", "10"])
    assert result.exit_code == 0, result.output
    assert "wrote 170 run folders" in result.output and "140 transfers" in result.output
    runs = plan.read_plan(tmp_path / "same")
    names = {r.name for r in runs}
    assert names == {t.name for t in authors_grid()}
    for t in authors_grid():
        entry = next(r for r in runs if r.name == t.name)
        assert entry.base == (t.base.name if t.base else None) and (entry.base is None or entry.base in names)
        # Identical to gen --all's folder when both were written at the same path.
        cmp = filecmp.dircmp(tmp_path / "gen" / t.name, tmp_path / "same" / t.name)
        assert not (cmp.diff_files or cmp.left_only or cmp.right_only), (t.name, cmp.diff_files)
    assert sum(1 for r in runs if r.base) == 140 and len(runs) == 170


def test_estimate_schedules_bases_first():
    runs = [plan.PlanRun("half0A", None, 100), plan.PlanRun("half0B", None, 100)] + [
        plan.PlanRun(f"transfer0A0B_1_{n}", "half0A", 100) for n in range(1, 5)]
    one = plan.estimate(runs, 1.0, 1)
    assert one["gpu_hours"] == pytest.approx(600 / 3600) and one["wall_hours"] == pytest.approx(600 / 3600)
    two = plan.estimate(runs, 1.0, 2)
    assert two["wall_hours"] == pytest.approx(300 / 3600)  # both bases at once, then 2 x 2 transfers
    assert plan.critical_path(runs) == ["half0A", "transfer0A0B_1_1"]
    assert two["critical_path_hours"] == pytest.approx(200 / 3600)


def test_plan_selects_experiments_and_splits():
    natman = plan.select(["natman"])
    assert len(natman) == 16 and all(t.split == "natman" for t in natman)
    one_split = plan.select(["random"], ["1"])
    assert len(one_split) == 2 + 7 * 6 and {t.split for t in one_split} == {"1"}
    result = CliRunner().invoke(cli, ["plan", "--experiments", "natman,bogus", "--out", "x"])
    assert result.exit_code == 2 and "'--experiments': 'bogus': expected some of" in result.output


@pytest.fixture
def small_plan(tmp_path, pb2):
    return natman_plan(tmp_path, pb2, "--solver", "max_iter=30", "--solver", "snapshot=10",
                       "--solver", "test_interval=10", "--solver", "test_iter=1")


def _finals(out: Path) -> dict[str, int]:
    return {p.parent.parent.name: p.stat().st_mtime_ns for p in out.glob("*/snapshots/*_iter_30.caffemodel")}


@pytest.mark.slow  # trains a plan with real Caffe
def test_run_all_runs_bases_first_and_resumes_after_a_kill(small_plan):
    out = small_plan
    proc = subprocess.Popen([CLI, "run-all", str(out), "--cpu-workers", "2", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while len(_finals(out)) < 5:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    done = _finals(out)
    status = CliRunner().invoke(cli, ["status", str(out)])
    assert status.exit_code == 0 and f"{len(done)} done" in status.output.splitlines()[-1]
    assert "running" not in status.output.splitlines()[-1]

    result = subprocess.run([CLI, "run-all", str(out), "--cpu-workers", "2", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0 and "16/16 runs trained" in result.stdout, result.stdout + result.stderr
    assert {k: v for k, v in _finals(out).items() if k in done} == done  # nothing finished was retrained
    for name in done:
        assert (out / name / "train.log").read_text().count(HEADER) == 1
    for entry in plan.read_plan(out):
        run = Run.load(out / entry.name)
        assert run.finished
        if entry.base:  # the transfer's init was made after its base's final snapshot
            base = Run.load(out / entry.base)
            assert run.init_weights.stat().st_mtime_ns >= base.final_model.stat().st_mtime_ns
            record = json.loads((run.dir / "transplant.json").read_text())
            assert record["base"] == str(base.final_model)
    final = CliRunner().invoke(cli, ["status", str(out)])
    assert final.output.splitlines()[-1] == "16 done"


def test_run_all_on_a_folder_without_a_plan_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["run-all", str(tmp_path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "has no plan.json" in result.output


def _caffe_span(log: Path) -> tuple[float, float]:
    """When Caffe logged its first and last line of a run (glog's time of day, in seconds)."""
    stamps = [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s in
              re.findall(r"^[IWEF](?:\d{4})?\d{4} (\d\d):(\d\d):(\d\d\.\d+)", log.read_text(), re.M)]
    return stamps[0], stamps[-1]


@pytest.mark.slow  # trains a plan with real Caffe
def test_run_all_trains_the_plans_n_runs_at_once_per_device_in_dependency_order(tmp_path, pb2):
    out = natman_plan(tmp_path, pb2, "--nets-per-gpu", "2", "--solver", "max_iter=20", "--solver", "snapshot=20",
                      "--solver", "test_interval=20", "--solver", "test_iter=1")
    result = subprocess.run([CLI, "run-all", str(out), "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0 and "16/16 runs trained" in result.stdout, result.stdout + result.stderr
    runs = plan.read_plan(out)
    spans = {r.name: _caffe_span(out / r.name / "train.log") for r in runs}
    for start, _ in spans.values():  # one CPU worker, the plan's 2 runs per device: never 3 Caffes at once
        assert sum(begin <= start <= end for begin, end in spans.values()) <= 2
    (a0, a1), (b0, b1) = spans["halfnatmanA"], spans["halfnatmanB"]
    assert a0 < b1 and b0 < a1  # both bases at once
    for r in runs:
        if r.base:
            assert spans[r.name][0] > spans[r.base][1]
