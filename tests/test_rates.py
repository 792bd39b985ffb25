"""`plan --rates gpu_check.json`: each net priced by its kind's measured rate and the packing, and
files that are not the check's refused on one line before anything is written."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from caffe_transfer.cli import cli
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.grid import plan
from caffe_transfer.grid.rates import SCHEMA, read_rates
from caffe_transfer.model.treatments import parse


def check_json(**changes) -> dict:
    """A gpu_check.json as the check writes it (schema 1), with the issue's H200 figures where it
    gives them and round ones elsewhere."""
    data = {
        "schema": SCHEMA, "architecture": "caffenet", "batch_size": 256,
        "device": {"name": "NVIDIA H200", "driver": "580.159.04", "cuda": "13.0", "cudnn": "9.14",
                   "memory_mib": 143771},
        "data_threads": 4,
        "rates": [
            {"kind": "base", "n": None, "datalayer_ms": 84.7, "memory_ms": 50.5, "gpu_mib": 4000},
            {"kind": "frozen", "n": 1, "datalayer_ms": 80.0, "memory_ms": 45.0, "gpu_mib": 3500},
            {"kind": "frozen", "n": 5, "datalayer_ms": 40.0, "memory_ms": 20.0, "gpu_mib": 3000},
            {"kind": "finetuned", "n": 3, "datalayer_ms": 90.0, "memory_ms": 52.0, "gpu_mib": 4100},
        ],
        "datalayer_alone_ms": {"0": 64.0, "4": 16.0},
        "packing": [
            {"kind": "base", "nets": 1, "aggregate_ms": 84.7},
            {"kind": "base", "nets": 2, "aggregate_ms": 56.2},
            {"kind": "base", "nets": 4, "aggregate_ms": 56.4},
            {"kind": "frozen", "nets": 1, "aggregate_ms": 60.0},
            {"kind": "frozen", "nets": 2, "aggregate_ms": 30.0},
        ],
        "recommended_nets_per_gpu": 2,
    }
    data.update(changes)
    return data


@pytest.fixture
def rates_file(tmp_path):
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(check_json()))
    return path


def test_each_kind_is_priced_by_its_measured_rate(rates_file):
    rates = read_rates(rates_file)
    ms = {name: rates.seconds(parse(name), 1) * 1000 for name in (
        "half0A", "netbase", "reduced-0250", "transfer0A0B_1_1", "transfer0A0B_1_3", "transfer0A0B_1_7",
        "transfer0A0A_1_3", "nolearn_1_3", "transfer-ft0A0B_1_1", "transfer-ft0A0A_1_7")}
    assert ms["half0A"] == ms["netbase"] == ms["reduced-0250"] == 84.7  # every layer trains, like a base
    assert ms["transfer0A0B_1_1"] == 80.0 and ms["transfer0A0B_1_7"] == 40.0  # clamped past the measured n
    assert ms["transfer0A0B_1_3"] == pytest.approx(60.0)  # halfway between n = 1 and n = 5
    assert ms["transfer0A0A_1_3"] == ms["transfer0A0B_1_3"] == ms["nolearn_1_3"]  # selffer, random: frozen
    assert ms["transfer-ft0A0B_1_1"] == ms["transfer-ft0A0A_1_7"] == 90.0  # one measured n: that rate


def test_packing_scales_by_the_measured_aggregate_of_its_kind(rates_file):
    rates = read_rates(rates_file)
    assert rates.seconds(parse("half0A"), 2) == pytest.approx(0.0847 * 56.2 / 84.7)
    assert rates.seconds(parse("transfer-ft0A0B_1_3"), 4) == pytest.approx(0.090 * 56.4 / 84.7)  # base's packing
    assert rates.seconds(parse("transfer0A0B_1_5"), 2) == pytest.approx(0.040 * 30.0 / 60.0)  # frozen's
    with pytest.raises(CaffeTransferError, match=r"4 frozen nets per GPU were not measured .* --nets-per-gpu 1 or 2"):
        rates.seconds(parse("transfer0A0B_1_5"), 4)


def test_plan_prints_the_grid_priced_by_the_rates(tmp_path, rates_file):
    result = CliRunner().invoke(cli, ["plan", "--out", str(tmp_path / "runs"), "--rates", str(rates_file),
                                      "--nets-per-gpu", "2", "--gpus", "8"])
    assert result.exit_code == 0, result.output
    rates = read_rates(rates_file)
    runs = plan.read_plan(tmp_path / "runs")
    gpu_hours = sum(r.max_iter * rates.seconds(parse(r.name), 2) for r in runs) / 3600
    cost = plan.estimate(runs, lambda r: rates.seconds(parse(r.name), 2), 8, 2)
    assert cost["gpu_hours"] == pytest.approx(gpu_hours)
    assert f"{gpu_hours:,.0f} GPU-hours" in result.output
    assert f"on 8 GPU(s) {cost['wall_hours']:,.0f} h wall-clock" in result.output
    assert plan.read_packing(tmp_path / "runs").nets_per_gpu == 2


def test_estimate_packs_runs_per_gpu_at_their_share_of_its_time():
    runs = [plan.PlanRun("half0A", None, 100), plan.PlanRun("half0B", None, 100)] + [
        plan.PlanRun(f"transfer0A0B_1_{n}", "half0A", 100) for n in range(1, 5)]
    packed = plan.estimate(runs, 1.0, 1, nets_per_gpu=2)
    # Both bases share the one GPU (each 200 s of wall-clock), then the transfers two by two.
    assert packed["gpu_hours"] == pytest.approx(600 / 3600) and packed["wall_hours"] == pytest.approx(600 / 3600)
    assert packed["critical_path_hours"] == pytest.approx(400 / 3600)
    priced = plan.estimate(runs, lambda r: 2.0 if r.base else 1.0, 2)
    assert priced["gpu_hours"] == pytest.approx(1000 / 3600) and priced["wall_hours"] == pytest.approx(500 / 3600)


@pytest.mark.parametrize("text, message", [
    ("not json at all", "is not the GPU check's JSON"),
    (json.dumps({"runs": []}), "is not the GPU check's JSON"),
    (json.dumps(check_json(schema="caffe-transfer/gpu-check/2")), "has schema 'caffe-transfer/gpu-check/2': expected"),
    (json.dumps(check_json(rates=[{"kind": "base", "n": None, "datalayer_ms": -1, "gpu_mib": None}])),
     "rates[0].datalayer_ms is -1.0: expected ms above 0"),
    (json.dumps(check_json(rates=[{"kind": "base", "n": 3, "datalayer_ms": 80, "gpu_mib": None}])),
     "rates[0].n is 3: expected null for a base"),
    (json.dumps(check_json(packing=[{"kind": "finetuned", "nets": 2, "aggregate_ms": 50}])),
     "packing[0].kind is 'finetuned': expected one of base, frozen"),
    (json.dumps({k: v for k, v in check_json().items() if k != "device"}), "no device: expected"),
])
def test_a_file_that_is_not_the_checks_json_is_one_line(tmp_path, text, message):
    path = tmp_path / "gpu_check.json"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["plan", "--out", str(tmp_path / "runs"), "--rates", str(path)])
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, changes, message", [
    (["--arch", "small"], {}, "measured caffenet, the plan is small: run the GPU check for small"),
    (["--nets-per-gpu", "4"], {}, "4 frozen nets per GPU were not measured"),
    (["--nets-per-gpu", "2"], {"device": {"name": "a small card", "memory_mib": 6000}},
     "2 nets per GPU of up to 4100 MiB each need 8200 MiB, the GPU (a small card) has 6000 MiB"),
    (["--experiments", "random"], {"rates": [{"kind": "base", "n": None, "datalayer_ms": 84.7, "gpu_mib": 1}]},
     "has no rate for finetuned nets, which the plan holds"),
])
def test_rates_that_cannot_price_the_plan_are_refused_before_it_is_written(tmp_path, args, changes, message):
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(check_json(**changes)))
    result = CliRunner().invoke(cli, ["plan", "--out", str(tmp_path / "runs"), "--rates", str(path), *args])
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "runs").exists()
