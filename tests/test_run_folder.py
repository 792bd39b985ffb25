"""One owner for each run folder, on real Caffe (CPU, the small net, tiny real-image LMDBs):
a regenerated folder never trains from stale weights, two trainers never share a folder, a
signal to the trainer's whole process group stops the run with a snapshot, and `train` and
`run.sh` resume from the same snapshot after a kill that cut the newest one short.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffe_transfer.cli import cli
from caffe_transfer.runs import logs
from caffe_transfer.runs.folder import STATE_WRITTEN, Run, State
from caffe_transfer.runs.train import HEADER, train
from caffe_transfer.runs.transplant import read_caffemodel

from .test_transplant_train import CLASSES, _same, _wait_for, data_root  # noqa: F401  (data_root: the fixture)

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "caffe-transfer")
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
SHORT = ["--solver", "max_iter=20", "--solver", "snapshot=10", "--solver", "test_interval=10",
         "--solver", "test_iter=1", "--solver", "display=5", "--solver", "stepsize=1000"]


def _gen(out: Path, data: Path, treatment: str, *options: str) -> Path:
    result = CliRunner().invoke(cli, ["gen", "-t", treatment, "--out", str(out), "--arch", "small", "--cpu",
                                      "--data-root", str(data), "--fc8-outputs", str(CLASSES), *SHORT, *options])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def base(data_root, tmp_path_factory) -> Path:  # noqa: F811
    """half0A trained to the end: the base of every transfer here."""
    run_dir = _gen(tmp_path_factory.mktemp("base") / "half0A", data_root, "half0A")
    assert train(run_dir, progress=False, threads=1).state is State.DONE
    return run_dir


@pytest.fixture
def beside(base, tmp_path) -> Path:
    """A runs folder with the trained base in it, for transfers to find."""
    (tmp_path / "half0A").symlink_to(base)
    return tmp_path


def _copied_from_base(run: Run, base: Path) -> None:
    """Every layer the treatment copies (all frozen in AnB) ends training as the base's."""
    final, source = read_caffemodel(run.final_model), read_caffemodel(Run.load(base).final_model)
    copied = [r for r in run.roles() if r.copied_from]
    assert [r.name for r in copied] == [f"conv{i}" for i in range(1, run.treatment.n + 1)]
    for role in copied:
        assert all(_same(a, b) for a, b in zip(final[role.name], source[role.layer])), role.name


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=ENV, cwd=cwd)


def _run_sh(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(run_dir / "run.sh")], capture_output=True, text=True, env=ENV)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# --- stale init and stale snapshots -----------------------------------------------------------
@pytest.mark.parametrize("route", ["train", "run.sh"])
def test_a_regenerated_folder_never_trains_from_the_init_of_its_earlier_version(beside, base, data_root, route):  # noqa: F811
    """gen A3B, transplant, gen A5B in the same folder (no snapshots, so no --force): the A3B
    init has random conv4-new/conv5-new that Caffe would silently keep frozen."""
    run_dir = _gen(beside / "transfer0A0B_1_3", data_root, "AnB", "--n", "3", "--split", "0")
    assert _cli("transplant", str(run_dir)).returncode == 0
    _gen(run_dir, data_root, "AnB", "--n", "5", "--split", "0")
    if route == "train":
        proc = _cli("train", str(run_dir), "--quiet")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ("init.caffemodel was made for another version of this folder (treatment transfer0A0B_1_3 -> "
                "transfer0A0B_1_5, train_val.prototxt changed, solver.prototxt changed): transplanted again"
                in proc.stderr), proc.stderr
        record = json.loads((run_dir / "transplant.json").read_text())
        assert record["fingerprint"] == str(Run.load(run_dir).fingerprint)
    else:
        proc = _run_sh(run_dir)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "init.caffemodel was made for another version of this folder: not using it" in proc.stderr
        assert "starting from ../half0A/snapshots/half0A_iter_20.caffemodel" in proc.stdout
    run = Run.load(run_dir)
    assert run.state() == (State.DONE, "")
    assert "Ignoring source layer conv4-new" not in run.log.read_text()
    _copied_from_base(run, base)


def test_changed_base_weights_make_the_init_again(beside, base, data_root, tmp_path):  # noqa: F811
    run_dir = _gen(beside / "transfer0A0B_1_2", data_root, "AnB", "--n", "2", "--split", "0")
    assert _cli("transplant", str(run_dir)).returncode == 0
    other = tmp_path / "other.caffemodel"
    shutil.copy(Run.load(base).snapshot(10), other)
    _gen(run_dir, data_root, "AnB", "--n", "2", "--split", "0", "--base-weights", str(other))
    proc = _cli("train", str(run_dir), "--quiet")
    assert proc.returncode == 0 and "(base weights changed): transplanted again" in proc.stderr, proc.stderr
    assert json.loads((run_dir / "transplant.json").read_text())["base"] == str(other)


@pytest.mark.parametrize("route", ["train", "run.sh"])
def test_snapshots_of_an_earlier_version_are_refused_in_one_line(beside, data_root, route):  # noqa: F811
    run_dir = _gen(beside / "transfer0A0B_1_3", data_root, "AnB", "--n", "3", "--split", "0")
    assert _cli("train", str(run_dir), "--quiet").returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "snapshots").iterdir()}
    _gen(run_dir, data_root, "AnB", "--n", "5", "--split", "0", "--force")
    proc = _cli("train", str(run_dir), "--quiet") if route == "train" else _run_sh(run_dir)
    assert proc.returncode == 1
    line = _one_line(proc.stderr)
    assert "transfer0A0B_1_3_iter_20.solverstate was made for another version of this run folder" in line
    assert ("(treatment transfer0A0B_1_3 -> transfer0A0B_1_5, train_val.prototxt changed, solver.prototxt changed)"
            if route == "train" else "(treatment, net, solver changed)") in line
    assert "move snapshots/ and train.log aside to train afresh, or gen it again as it was" in line
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "snapshots").iterdir()} == before
    assert Run.load(run_dir).state()[0] is State.FAILED
    refused = _cli("transplant", str(run_dir))
    assert refused.returncode == 1 and "has trained from its init.caffemodel already" in refused.stderr


# --- one trainer per folder -------------------------------------------------------------------
@pytest.mark.parametrize("first", ["train", "run.sh"])
def test_a_second_trainer_is_refused_and_the_first_trains_one_clean_run(data_root, tmp_path, first):  # noqa: F811
    # Long enough (400 iterations, seconds) that the first is still training when the others try.
    run_dir = _gen(tmp_path / "half0B", data_root, "half0B", "--solver", "max_iter=400", "--solver", "snapshot=200",
                   "--solver", "test_interval=100", "--solver", "display=20")
    cmd = [CLI, "train", str(run_dir), "--quiet"] if first == "train" else ["bash", str(run_dir / "run.sh")]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run_dir / "train.log", "Iteration 20,", proc)
    holder = "caffe-transfer train" if first == "train" else "run.sh"
    for second in (_cli("train", str(run_dir), "--quiet"), _run_sh(run_dir)):
        assert second.returncode == 1
        line = _one_line(second.stderr)
        assert re.search(rf"{re.escape(str(run_dir))} is in use by {holder} \(pid {proc.pid} on \S+ since \S+\): "
                         "wait for it to end, or stop it", line), line
    state, detail = Run.load(run_dir).state()
    assert state is State.RUNNING and f"pid {proc.pid}" in detail
    regen = CliRunner().invoke(cli, ["gen", "-t", "half0B", "--out", str(run_dir), "--arch", "small", "--cpu",
                                     "--data-root", str(data_root), "--fc8-outputs", str(CLASSES)])
    assert regen.exit_code == 1 and f"{run_dir} is in use by {holder} (pid {proc.pid}" in regen.output
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    text = (run_dir / "train.log").read_text()
    assert len([line for line in text.splitlines() if line.startswith("==> ")]) == 1
    tables = logs.parse_file(run_dir / "train.log")
    assert [r["NumIters"] for r in tables.test] == [0, 100, 200, 300, 400]
    assert [r["NumIters"] for r in tables.train] == list(range(0, 401, 20))
    assert Run.load(run_dir).state() == (State.DONE, "")


# --- signals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("route,signum", [("train", signal.SIGTERM), ("train", signal.SIGHUP),
                                          ("run.sh", signal.SIGTERM)])
def test_a_signal_to_the_process_group_stops_with_a_snapshot_and_resumes_to_the_end(data_root, tmp_path,  # noqa: F811
                                                                                     route, signum):
    # Caffe's own snapshots only at the end: any earlier one is the signal's, however late it lands
    run_dir = _gen(tmp_path / "half0A", data_root, "half0A", "--solver", "max_iter=200", "--solver", "snapshot=200")
    cmd = [CLI, "train", str(run_dir), "--quiet"] if route == "train" else ["bash", str(run_dir / "run.sh")]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group, as a terminal or a scheduler gives it
    _wait_for(run_dir / "train.log", "Iteration 15,", proc)
    os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    run = Run.load(run_dir)
    snap = run.resume_state()
    assert snap is not None and 15 <= snap.iteration < 200  # the snapshot the signal asked for
    assert f"stopped at iteration {snap.iteration} with a snapshot; run again to resume" in out
    assert run.state() == (State.STOPPED, f"resumes from iteration {snap.iteration}")

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    sessions = [line for line in run.log.read_text().splitlines() if line.startswith("==> ")]
    assert len(sessions) == 2 and f"resuming from half0A_iter_{snap.iteration}.solverstate" in sessions[1]
    tables = logs.parse_file(run.log)
    assert [r["NumIters"] for r in tables.test][-1] == 200 and run.state() == (State.DONE, "")


# --- a kill while a snapshot is written ---------------------------------------------------------
@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> Path:  # noqa: F811
    run_dir = _gen(tmp_path_factory.mktemp("cut") / "half0B", data_root, "half0B", "--solver", "max_iter=30")
    assert train(run_dir, progress=False, threads=1).state is State.DONE
    return run_dir


def _killed_while_writing(trained: Path, to: Path, cut: str) -> Path:
    """The folder as a kill leaves it while Caffe writes iteration 20's .caffemodel or
    .solverstate: that file half written, nothing after it, the log ending where Caffe was."""
    shutil.copytree(trained, to)
    run = Run.load(to)
    for it in (20, 30):
        for suffix in (".caffemodel", ".solverstate"):
            path = run.snapshot(it, suffix)
            if it == 30 or (cut == ".caffemodel" and suffix == ".solverstate"):
                path.unlink()
            elif suffix == cut:
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    said = f"Snapshotting to binary proto file {run.snapshot_prefix}_iter_20.caffemodel" if cut == ".caffemodel" \
        else f"{STATE_WRITTEN}{run.snapshot_prefix}_iter_20.solverstate"
    text = run.log.read_text()
    run.log.write_text(text[: text.index("\n", text.index(said)) + 1])
    return to


@pytest.mark.parametrize("cut", [".caffemodel", ".solverstate"])
def test_train_and_run_sh_resume_from_the_same_snapshot_after_a_kill_during_a_snapshot(trained, tmp_path, cut):
    by_train = _killed_while_writing(trained, tmp_path / "train" / "half0B", cut)
    by_script = _killed_while_writing(trained, tmp_path / "script" / "half0B", cut)
    assert Run.load(by_train).resume_state().iteration == 10
    assert train(by_train, progress=False, threads=1).state is State.DONE
    proc = _run_sh(by_script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for run_dir, by in ((by_train, HEADER), (by_script, "==> run.sh")):
        last = [line for line in (run_dir / "train.log").read_text().splitlines() if line.startswith("==> ")][-1]
        assert last.startswith(by) and "resuming from half0B_iter_10.solverstate" in last, last
        assert Run.load(run_dir).state() == (State.DONE, "")
        assert [r["NumIters"] for r in logs.parse_file(run_dir / "train.log").test][-1] == 30
