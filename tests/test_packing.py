"""Several nets per GPU: which runs share a GPU (run-all's slots, SLURM's array tasks) and the
CPUs their DataLayer threads get, as plan records them."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from caffe_transfer.cli import cli
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.grid import plan
from caffe_transfer.grid.packing import Packing, device_slots, pack
from caffe_transfer.grid.slurm import job_arrays


def _natman() -> list[plan.PlanRun]:
    return plan.plan_runs(plan.select(["natman"]))


def test_each_array_task_trains_up_to_n_runs_of_one_dependency_level():
    runs = _natman()
    by_name = {r.name: r for r in runs}
    for n in (1, 2, 3, 4):
        arrays = job_arrays(runs, n)
        first, groups = arrays[0], arrays[1:]
        assert first.tasks == pack([r.name for r in plan.priority_order(runs) if r.base is None], n)
        assert all(a.runs for a in arrays)
        assert sorted(name for a in arrays for name in a.runs) == sorted(by_name)  # every run, once
        for array in arrays:
            assert all(1 <= len(task) <= n for task in array.tasks)
            assert all(len(task) == n for task in array.tasks[:-1])  # only the last task is short
        for group in groups:  # a base's transfers wait for the one task that trains that base
            assert group.base in first.tasks[group.after]
            assert all(by_name[name].base == group.base for name in group.runs)
    assert [len(a.tasks) for a in job_arrays(runs, 4)] == [1, 2, 2]


def test_run_all_slots_spread_each_gpu_n_times():
    assert device_slots([0, 1], 2) == [0, 1, 0, 1]
    assert device_slots([None], 3) == [None, None, None]
    assert pack(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]


def test_each_gpu_run_gets_its_data_threads_and_a_prefetch_cpu():
    packing = Packing(nets_per_gpu=3, data_threads=4)
    assert packing.task_cpus(gpu=True) == 15 and packing.task_cpus(gpu=False) == 3
    assert packing.environment(True, 15, 3) == {"CAFFE_DATA_THREADS": "4"}
    assert packing.environment(True, 16, 8) == {"CAFFE_DATA_THREADS": "1"}  # 2 CPUs each: fewer threads
    assert packing.environment(False, 15, 3) == {}  # CPU runs: Caffe chooses
    assert Packing(2, 0).environment(True, 4, 2) == {"CAFFE_DATA_THREADS": "0"}  # stock Caffe stays stock


@pytest.mark.parametrize("cpu, cpus, expect", [
    ((), (), {"cpus": 2 * (3 + 1), "threads": "3"}),
    ((), ("--cpus-per-task", "4"), {"cpus": 4, "threads": "1"}),
    (("--cpu",), (), {"cpus": 2, "threads": None}),
])
def test_slurm_tasks_ask_for_the_cpus_of_their_runs(tmp_path, cpu, cpus, expect):
    out = tmp_path / "plan"
    result = CliRunner().invoke(cli, ["plan", "--experiments", "natman", "--out", str(out), "--nets-per-gpu", "2",
                                      "--data-threads", "3", "--scheduler", "slurm", *cpu, *cpus])
    assert result.exit_code == 0, result.output
    assert plan.read_packing(out) == Packing(2, 3)
    script = (out / "slurm" / "first.sbatch").read_text()
    assert f"#SBATCH --cpus-per-task={expect['cpus']}\n" in script
    exported = re.search(r"^export CAFFE_DATA_THREADS=(\S+)$", script, re.M)
    assert (exported and exported[1]) == expect["threads"]
    assert ("#SBATCH --gres=gpu:1" in script) == (not cpu)
    assert "0) runs=(halfnatmanA halfnatmanB) ;;" in script


def test_a_plan_written_before_packing_trains_one_net_per_gpu(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps({"runs": [{"name": "half0A", "base": None, "max_iter": 10}]}))
    assert plan.read_packing(tmp_path) == Packing(1, 4)
    (tmp_path / "plan.json").write_text(json.dumps({"runs": [], "packing": {"nets_per_gpu": 0}}))
    with pytest.raises(CaffeTransferError, match="plan.json: not a plan written by caffe-transfer plan"):
        plan.read_packing(tmp_path)
