"""A user's runs against the authors' own spread: the report's comparison with the paper, and a
live run's val accuracy against the authors' curve of the same kind (synthetic logs in the real
glog format, read by the real parser and compared by the real code)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from caffe_transfer.cli import cli
from caffe_transfer.grid.plan import write_plan
from caffe_transfer.model.treatments import parse
from caffe_transfer.results import curves, paper, report
from caffe_transfer.runs.gen import GenOptions

STAMP = "I1130 10:00:00.000000 4242 solver.cpp:330]"


def write_log(run_dir, accuracies: dict[int, float]) -> None:
    """A `caffe train` log with a test pass at each iteration, as today's Caffe prints it."""
    lines = [f"{STAMP} Solving CaffeNet", f"{STAMP} Learning Rate Policy: step"]
    for it, acc in sorted(accuracies.items()):
        lines += [f"{STAMP} Iteration {it}, Testing net (#0)",
                  f"{STAMP}     Test net output #0: accuracy = {acc}",
                  f"{STAMP}     Test net output #1: loss = 2.5 (* 1 = 2.5 loss)",
                  f"{STAMP} Iteration {it} (1.5 iter/s, 20s/20 iters), loss = 2.4"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train.log").write_text("\n".join(lines) + "\n")


def authors_curve(kind: str) -> dict[int, float]:
    entry = curves.load()[kind]
    return dict(zip(entry["iterations"], entry["mean"]))


def test_a_run_on_the_authors_curve_is_not_flagged_and_a_lagging_one_is(tmp_path):
    mean = authors_curve("AnB n=3")
    until = [i for i in mean if i <= 60000]
    write_log(tmp_path / "on" / "transfer0A0B_1_3", {i: mean[i] for i in until})
    # a run that learns at half the authors' speed: at iteration i it is where they were at i/2
    write_log(tmp_path / "lag" / "transfer0A0B_1_3", {i: mean[i // 2] for i in until if i // 2 in mean})
    on = curves.check(tmp_path / "on" / "transfer0A0B_1_3")
    lag = curves.check(tmp_path / "lag" / "transfer0A0B_1_3")
    assert (on.kind, on.iteration, on.outcome, on.flagged) == ("AnB n=3", 60000, "on", False)
    assert (lag.iteration, lag.outcome, lag.flagged) == (60000, "below", True)
    assert lag.authors_runs == 8 and lag.accuracy == mean[30000] < lag.authors_mean - 2 * lag.authors_sd
    assert lag.label.endswith("below") and f"{mean[60000]:.3f}±" in lag.label


def test_a_single_run_kind_uses_the_bases_spread(tmp_path):
    kinds = curves.load()
    write_log(tmp_path / "nolearn_1_3", {10000: 0.001})
    check = curves.check(tmp_path / "nolearn_1_3")
    at = kinds["base"]["iterations"].index(10000)
    assert check.authors_runs == 1 and check.authors_sd == kinds["base"]["sd"][at]
    assert check.outcome == "on"


def test_only_caffenet_on_the_papers_schedule_is_compared(tmp_path):
    options = GenOptions(arch="small", data_root=tmp_path / "data", fc8_outputs=10, gpu=False,
                         solver={"max_iter": 300, "stepsize": 200})
    write_plan(tmp_path / "plan", [parse("half0B")], options)
    write_log(tmp_path / "plan" / "half0B", {100: 0.5, 200: 0.6})
    assert curves.check(tmp_path / "plan" / "half0B").outcome == "n/a: not CaffeNet on the paper's schedule"


def test_status_shows_the_curve_column(tmp_path):
    options = GenOptions(arch="caffenet", data_root=tmp_path / "data", fc8_outputs=1000, gpu=False)
    write_plan(tmp_path / "plan", [parse("half0B"), parse("transfer0B0B_1_5")], options)
    mean = authors_curve("base")
    write_log(tmp_path / "plan" / "half0B", {i: mean[i] - 0.1 for i in mean if i <= 20000})
    result = CliRunner().invoke(cli, ["status", str(tmp_path / "plan")])
    assert result.exit_code == 0, result.output
    header, base_row, transfer_row = result.output.splitlines()[:3]
    assert "vs the authors’ curve" in header
    assert f"{mean[20000] - 0.1:.3f} vs {mean[20000]:.3f}±" in base_row and "below" in base_row
    assert "n/a: no test yet" in transfer_row


def test_the_data_file_is_what_its_command_rebuilds(reference):
    data = json.loads(curves.DATA.read_text())
    assert data["command"] == curves.COMMAND and "released logs" in data["source"]
    assert curves.build(reference / "results")["kinds"] == data["kinds"]
    assert len(data["kinds"]["base"]["runs"]) == 8


# --- the report's comparison with the paper --------------------------------------------------
def test_the_bases_spread_is_the_authors(reference):
    _, sd, runs = curves.spread("base")
    assert runs == 8 and sd == pytest.approx(0.0055, abs=1e-4)


def test_a_fresh_run_is_judged_by_the_authors_spread_not_the_parsers_tolerance():
    """Off by one SD of the authors' 8 bases: OFF by the parser's 0.001, within their spread."""
    _, base_sd, _ = curves.spread("base")
    _, bnb5_sd, _ = curves.spread("BnB n=5")
    summary = {"base_mean": 0.6251 + base_sd, "layers": {"BnB": [None] * 4 + [0.594 + 3 * bnb5_sd, None, None]},
               "table1": {"1-7": {"over_baseB": 0.0167 - 3 * base_sd}}}
    rows = {r["id"]: r for r in paper.compare_with_paper(summary)}
    base, bnb5, boost = rows["base_mean"], rows["layers.BnB.n5"], rows["table1.1-7.over_baseB"]
    assert base["within_recomputed"] is False and base["within_spread"] is True
    assert (base["authors_kind"], base["authors_runs"]) == ("base", 8)
    assert bnb5["within_spread"] is False and (bnb5["authors_kind"], bnb5["authors_runs"]) == ("BnB n=5", 4)
    assert boost["within_spread"] is False and boost["authors_kind"] == "base"
    assert rows["full_net"]["within_spread"] is None
    text = report.text_report({**summary, "metric": "m", "full_net": None,
                               "layers": {f: [None] * 7 for f in report.FAMILIES},
                               "table1": {}, "runs": []}, list(rows.values()), [], [])
    assert "within the authors' spread  OFF  base_mean" in text
    assert "(SD 0.0055 of their 8 bases; 1 run of full)" in text


def test_the_report_asks_the_run_folder_whether_a_gen_run_is_done(tmp_path):
    """A log that reached max_iter is not a finished run when the folder has no final snapshot
    (a log copied in, or the snapshots deleted): the report says what the run folder says."""
    from caffe_transfer.runs.gen import write_runs

    runs = tmp_path / "runs"
    write_runs({runs / "half0A": parse("half0A")}, GenOptions(arch="small", gpu=False, solver={"max_iter": 40}))
    write_log(runs / "half0A", {i: 0.5 for i in (0, 20, 40)})
    result, _ = report.collect(runs)
    assert result[0].last_iteration == 40 and not result[0].finished
    (problem,) = report.incomplete_runs(result)[0]["problems"]
    assert problem.startswith(f"{result[0].state[0].value} at iteration 40 of 40")
