"""The SLURM scripts against a real one-node SLURM cluster on localhost (Debian's slurmctld,
slurmd and munge, started by tools/slurm_local.sh): dependency order, logs, snapshots, and a job
cancelled with a signal that snapshots, requeues and resumes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from caffe_transfer.grid.plan import read_plan
from caffe_transfer.grid.slurm import job_arrays
from caffe_transfer.runs import logs
from caffe_transfer.runs.folder import Run
from caffe_transfer.runs.train import HEADER

from .conftest import REPO, natman_plan

CLI = str(Path(sys.executable).parent / "caffe-transfer")
pytestmark = pytest.mark.slow  # starts a one-node SLURM and trains

LOCAL = REPO / "tools" / "slurm_local.sh"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A one-node cluster of its own (own config and ports; /etc/slurm is not touched)."""
    if os.geteuid() != 0:
        pytest.skip("starting a SLURM cluster needs root (CI runs as root)")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_LOCAL": str(state)}
    proc = subprocess.run(["bash", str(LOCAL)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")  # for sbatch, squeue, scancel and the jobs
    yield
    subprocess.run(["scancel", "--user", "root"], capture_output=True)
    subprocess.run(["bash", str(LOCAL), "stop"], capture_output=True, env=env)
    if saved is None:
        del os.environ["SLURM_CONF"]
    else:
        os.environ["SLURM_CONF"] = saved


def _wait(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            queue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
            raise AssertionError(f"timed out waiting for {what}\n{queue}")
        time.sleep(0.2)


def test_plan_runs_on_slurm_in_dependency_order_and_a_cancelled_job_resumes(slurm_cluster, tmp_path, pb2):
    out = natman_plan(tmp_path, pb2, "--scheduler", "slurm", "--solver", "max_iter=120", "--solver", "snapshot=20",
                      "--solver", "test_interval=20", "--solver", "test_iter=1", "--solver", "display=5")
    submit = subprocess.run(["bash", str(out / "slurm" / "submit.sh")], capture_output=True, text=True)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    first = re.search(r"job array (\d+)", submit.stdout)[1]
    assert submit.stdout.count("transfers from") == 2 and f"(after task {first}_0)" in submit.stdout

    base = Run.load(out / "halfnatmanA")
    _wait(lambda: base.log.is_file() and "Iteration 25," in base.log.read_text(), "halfnatmanA at iteration 25")
    cancel = subprocess.run(["scancel", "--signal=TERM", "--batch", f"{first}_0"], capture_output=True, text=True)
    assert cancel.returncode == 0, cancel.stderr

    runs = read_plan(out)
    _wait(lambda: all(Run.load(out / r.name).finished for r in runs), "every run to finish")
    _wait(lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip(),
          "an empty queue", timeout=60)

    sessions = [line for line in base.log.read_text().splitlines() if line.startswith(HEADER)]
    assert len(sessions) == 2 and "resuming from halfnatmanA_iter_" in sessions[1], sessions
    stopped_at = int(re.search(r"_iter_(\d+)\.solverstate", sessions[1])[1])
    # the snapshot the signal asked for (or a periodic one just before): how far past 25 depends
    # on how soon slurmd delivers scancel's signal, seconds on a loaded machine
    assert 25 <= stopped_at < 120
    task_log = "".join(p.read_text() for p in (out / "slurm" / "logs").glob("ct-first_0_*.out"))
    assert "stopped with a snapshot: requeueing" in task_log and "(restart 1)" in task_log

    for entry in runs:
        run = Run.load(out / entry.name)
        assert logs.parse_file(run.log).test[-1]["NumIters"] == 120
        assert list((out / "slurm" / "logs").glob(f"ct-{entry.base or 'first'}_*.out"))
        if entry.base:  # started only after its own base had finished
            assert run.init_weights.stat().st_mtime_ns >= Run.load(out / entry.base).final_model.stat().st_mtime_ns


def _blobs(model: Path, pb2) -> dict[str, list[np.ndarray]]:
    """A caffemodel's learned blobs by layer (its layer parameters name this plan's own paths)."""
    net = pb2.NetParameter.FromString(model.read_bytes())
    return {layer.name: [np.array(b.data, dtype=np.float32) for b in layer.blobs] for layer in net.layer if layer.blobs}


def _same_blobs(a: Path, b: Path, pb2) -> bool:
    x, y = _blobs(a, pb2), _blobs(b, pb2)
    return x.keys() == y.keys() and all(np.array_equal(p, q) for k in x for p, q in zip(x[k], y[k]))


def test_a_packed_task_is_killed_requeued_and_its_runs_end_as_unpacked(slurm_cluster, tmp_path, pb2):
    solver = ("--solver", "max_iter=200", "--solver", "snapshot=20", "--solver", "test_interval=100",
              "--solver", "test_iter=1", "--solver", "display=5", "--solver", "random_seed=7")
    out = natman_plan(tmp_path / "packed", pb2, "--scheduler", "slurm", "--nets-per-gpu", "2", *solver)
    alone = natman_plan(tmp_path / "alone", pb2, *solver)
    runs = read_plan(out)
    killed = next(a for a in job_arrays(runs, 2) if a.base == "halfnatmanA").tasks[0]
    assert len(killed) == 2

    submit = subprocess.run(["bash", str(out / "slurm" / "submit.sh")], capture_output=True, text=True)
    assert submit.returncode == 0, submit.stdout + submit.stderr
    job = re.search(r"transfers from halfnatmanA in 4 task\(s\): job array (\d+)", submit.stdout)[1]
    logs_of = [Run.load(out / name).log for name in killed]
    _wait(lambda: all(log.is_file() and "Iteration 25," in log.read_text() for log in logs_of),
          f"{' and '.join(killed)} at iteration 25")

    def requeued() -> bool:
        return "requeueing" in "".join(p.read_text() for p in (out / "slurm" / "logs").glob("ct-halfnatmanA_0_*.out"))

    # scancel may answer "can not be altered now" while the task's state is in transition: ask again
    # until the task says it requeued.
    for _ in range(20):
        subprocess.run(["scancel", "--signal=TERM", "--batch", f"{job}_0"], capture_output=True)
        deadline = time.monotonic() + 5
        while not requeued() and time.monotonic() < deadline:
            time.sleep(0.2)
        if requeued():
            break
    assert requeued()

    # The same runs unpacked, one after another (bases first), one OpenBLAS thread as in a packed task.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    for entry in sorted(runs, key=lambda r: r.base is not None):
        done = subprocess.run([CLI, "train", str(alone / entry.name), "--quiet"], capture_output=True, text=True,
                              env=env)
        assert done.returncode == 0, done.stdout + done.stderr

    _wait(lambda: all(Run.load(out / r.name).finished for r in runs), "every packed run to finish")
    _wait(lambda: not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip(),
          "an empty queue", timeout=60)
    task_log = "".join(p.read_text() for p in (out / "slurm" / "logs").glob("ct-halfnatmanA_0_*.out"))
    assert "(restart 1)" in task_log and "failed" not in task_log, task_log
    resumed = []
    for entry in runs:
        packed, unpacked = Run.load(out / entry.name), Run.load(alone / entry.name)
        sessions = [line for line in packed.log.read_text().splitlines() if line.startswith(HEADER)]
        assert logs.parse_file(packed.log).test[-1]["NumIters"] == 200
        if len(sessions) == 2:  # stopped by the signal: resumed once, from its snapshot; equal until then
            assert entry.name in killed and "resuming from" in sessions[1], sessions
            assert _same_blobs(packed.dir / "snapshots" / f"{entry.name}_iter_20.caffemodel",
                               unpacked.dir / "snapshots" / f"{entry.name}_iter_20.caffemodel", pb2)
            resumed.append(entry.name)
        else:  # trained once (a run of the killed task that had finished is not trained again), as alone
            assert len(sessions) == 1, sessions
            assert _same_blobs(packed.final_model, unpacked.final_model, pb2), entry.name
    assert resumed, "the signal stopped no run"
