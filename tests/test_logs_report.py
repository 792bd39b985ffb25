"""Logs, the paper's metric and the report: the authors' numbers recomputed from their own logs."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import tarfile
import time
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from caffe_transfer.cli import cli
from caffe_transfer.common import caffe_env
from caffe_transfer.model.treatments import parse
from caffe_transfer.results import report
from caffe_transfer.runs import gen, logs

from .conftest import make_data_root


# --- the authors' logs ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def authors_report(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    summary = report.write_report(reference / "results", out, out / "numbers.json")
    return summary, out


def test_every_number_of_experiment_md_is_reproduced_from_the_logs(authors_report):
    summary, _ = authors_report
    rows = report.compare_with_paper(summary)
    assert len(rows) == 66
    off = [r["id"] for r in rows if r["recomputed"] is not None and not r["within_recomputed"]]
    assert off == []
    assert all(r["within_paper"] for r in rows if r["paper"] is not None)


def test_headline_numbers(authors_report):
    summary, _ = authors_report
    assert summary["base_mean"] == pytest.approx(0.6251, abs=1e-4)
    assert summary["full_net"] == pytest.approx(0.5763, abs=1e-4)
    assert summary["table1"]["1-7"]["over_baseB"] == pytest.approx(0.0167, abs=1e-4)
    assert summary["table1"]["1-7"]["over_BnB+"] == pytest.approx(0.0156, abs=1e-4)
    assert summary["table1"]["5-7"]["over_BnB+"] == pytest.approx(0.0176, abs=1e-4)
    assert summary["layers"]["AnB"] == pytest.approx([.628, .624, .619, .600, .578, .581, .543], abs=1e-3)
    assert summary["natman"]["target_manmade"]["layers"][-1] == pytest.approx(0.2914, abs=1e-4)
    assert summary["random"]["layers"][2] == pytest.approx(0.0011, abs=1e-4)
    assert summary["reduced"]["1300"] == pytest.approx(0.5518, abs=1e-4)


def test_report_names_missing_and_stub_logs(authors_report, reference):
    summary, out = authors_report
    incomplete = {r["name"]: " ".join(r["problems"]) for r in summary["incomplete"]}
    no_logs = [p.name for p in (reference / "results").iterdir() if not list(p.glob("*.gz"))]
    assert len(no_logs) == 22
    for name in no_logs:
        assert "no log files" in incomplete[name]
    assert "stub" in incomplete["half0A"]
    text = (out / "report.txt").read_text()
    assert "transfer-ft0B0A_1_1: transfer-ft0B0A_1_1: no log files" in text


def test_report_writes_figures_tables_and_json(authors_report):
    summary, out = authors_report
    for stem in ("figure2", "figure3", "reduced"):
        assert (out / f"{stem}.png").stat().st_size > 10_000
        assert (out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    runs = (out / "runs.csv").read_text().splitlines()
    assert runs[0] == "name,treatment,family,split,n,score,evaluations,last_iteration,max_iter,files,curve,cudnn"
    assert len(runs) == 171
    assert (out / "table1.csv").read_text().splitlines()[0] == "layers,over_baseB,over_BnB+"
    data = json.loads((out / "numbers.json").read_text())
    assert set(data) >= {"metric", "base_mean", "layers", "table1", "natman", "random", "reduced", "runs"}
    assert len(data["layers"]["AnB+"]) == 7 and "over_BnB+" in data["table1"]["3-7"]
    assert {"name": "half0A", "score": pytest.approx(0.6151, abs=1e-4)}.items() <= next(
        r for r in data["runs"] if r["name"] == "half0A").items()


def test_restarted_run_is_merged_by_iteration_later_file_winning(reference):
    files = logs.log_files(reference / "results" / "half0A")
    first, second = logs.parse_file(files[0]), logs.parse_file(files[1])
    overlap = {r["NumIters"] for r in first.test} & {r["NumIters"] for r in second.test}
    assert overlap  # the second job restarted from a snapshot before the first stopped
    merged = logs.read_logs(files)
    iters = [r["NumIters"] for r in merged.test]
    assert iters == sorted(set(iters)) and iters[-1] == 450000
    later = {r["NumIters"]: r for r in second.test}
    for row in merged.test:
        if row["NumIters"] in overlap:
            assert row == later[row["NumIters"]]


def test_fast_test_table_equals_the_full_parse(reference):
    for run in ("half0A", "netbase", "transfer1B1A_1_4"):
        files = logs.log_files(reference / "results" / run)
        assert logs.read_logs(files, train=False).test == logs.read_logs(files).test


def test_junk_truncated_and_testless_logs_are_reported_not_fatal(tmp_path, reference):
    source = logs.log_files(reference / "results" / "half1B")[0]
    raw = source.read_bytes()
    (tmp_path / "a_truncated.gz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "b_junk.log").write_bytes(b"\x00garbage\nnot a log line\n" * 50 + gzip.decompress(raw)[:2000])
    (tmp_path / "c_stub.gz").write_bytes(gzip.compress(b""))
    tables = logs.read_run(tmp_path)
    problems = " ".join(tables.problems)
    assert "a_truncated.gz: truncated gzip" in problems
    assert "b_junk.log: no test evaluations" in problems
    assert "c_stub.gz: stub" in problems
    assert len(tables.test) > 10 and len(tables.train) > 100


def test_metric_is_mean_of_ten_best():
    assert logs.score([0.1 * i for i in range(20)]) == pytest.approx(sum(0.1 * i for i in range(10, 20)) / 10)
    assert logs.score([0.5, 0.7]) == pytest.approx(0.6)
    assert logs.score([]) is None


def test_parsing_all_authors_logs_takes_seconds(reference, capsys):
    start = time.perf_counter()
    runs, _ = report.collect(reference / "results")
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[timing] parsed the test tables of {sum(len(r.files) for r in runs)} log files in {elapsed:.1f} s")
    assert len(runs) == 170


# --- today's logs from a real caffe train -----------------------------------------------------
def _train_tiny(root: Path, pb2, loss_top: bool) -> Path:
    """60 iterations of real `caffe train` (small net, CPU) on random images; its log."""
    treatment = parse("half0A")
    data = make_data_root(root / "data", {treatment.train_set, treatment.val_set}, size=32, count=64,
                          classes=4, pb2=pb2)
    run = root / treatment.name
    gen.write_runs({run: treatment}, gen.GenOptions(
        arch="small", data_root=data, fc8_outputs=4, gpu=False,
        solver={"max_iter": 60, "test_interval": 20, "test_iter": 2, "display": 10, "snapshot": 30}))
    if loss_top:  # a loss with a top blob makes Caffe print `Train net output` lines
        net = run / "train_val.prototxt"
        net.write_text(net.read_text().replace('name: "loss"', 'name: "loss"\n  top: "loss"'))
    log = run / "train.log"
    with log.open("w") as f:
        subprocess.run([str(caffe_env.tool("caffe")), "train", "--solver", "solver.prototxt"], cwd=run,
                       stderr=f, check=True, env={"GLOG_logtostderr": "1", "PATH": "/usr/bin:/bin"})
    return log


@pytest.fixture(scope="module")
def real_log(tmp_path_factory, pb2):
    """The log of a net exactly as gen writes it (its loss layer has no top, as the authors')."""
    return _train_tiny(tmp_path_factory.mktemp("tiny"), pb2, loss_top=False)


@pytest.fixture(scope="module")
def real_log_with_outputs(tmp_path_factory, pb2):
    return _train_tiny(tmp_path_factory.mktemp("tiny_outputs"), pb2, loss_top=True)


def _caffe_parse_log():
    """Caffe's own tools/extra/parse_log.py, from the source package the install script cached.

    It is Python 2 code: only its parsing functions (everything before `save_csv_files`) are
    loaded, unchanged."""
    cache = caffe_env.caffe_root() / "cache"
    tarballs = sorted(cache.glob("caffe_*.orig.tar.gz"))
    if not tarballs:
        pytest.skip(f"no Caffe source tarball in {cache}")
    with tarfile.open(tarballs[0]) as tar:
        source = tar.extractfile("tools/extra/parse_log.py").read().decode()
        seconds = tar.extractfile("tools/extra/extract_seconds.py").read().decode()
    extract_seconds = types.ModuleType("extract_seconds")
    exec(compile(seconds, "extract_seconds.py", "exec"), extract_seconds.__dict__)
    module = types.ModuleType("caffe_parse_log")
    module.__dict__["extract_seconds"] = extract_seconds
    body = source[: source.index("def save_csv_files")].replace("import extract_seconds\n", "")
    exec(compile(body, "parse_log.py", "exec"), module.__dict__)
    return module


@pytest.mark.slow  # trains a tiny net for a real log
def test_todays_log_parses_like_caffes_parse_log(real_log_with_outputs, tmp_path):
    real_log = real_log_with_outputs
    # parse_log.py reads the classic stamp (I1127 18:11:30); glog >= 0.6 adds the year
    # (I20261127 18:11:30), so Caffe's parser gets a copy without it. Ours reads both.
    classic = tmp_path / "classic.log"
    classic.write_text(re.sub(r"^([IWEF])\d{4}(\d{4} )", r"\1\2", real_log.read_text(), flags=re.M))
    theirs_train, theirs_test = _caffe_parse_log().parse_log(str(classic))
    ours = logs.parse_file(real_log)
    assert len(ours.test) == 4 and len(ours.train) == 6  # tests at 0, 20, 40, 60; outputs at 0..50
    for mine, theirs in ((ours.train, theirs_train), (ours.test, theirs_test)):
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            assert list(a) == list(b)
            assert a["NumIters"] == b["NumIters"]
            assert a["Seconds"] == pytest.approx(b["Seconds"], abs=1e-6)
            for key in list(a)[2:]:
                assert a[key] == pytest.approx(b[key], nan_ok=True)
    assert logs.parse_file(real_log, train=False).test == ours.test


@pytest.mark.slow  # trains a tiny net for a real log
def test_loss_without_top_gives_train_rows_from_iteration_lines(real_log):
    tables = logs.parse_file(real_log)
    assert "Train net output" not in real_log.read_text()
    assert [r["NumIters"] for r in tables.train] == [0, 10, 20, 30, 40, 50, 60]
    assert all(0 < r["loss"] < 10 for r in tables.train)
    assert [r["NumIters"] for r in tables.test] == [0, 20, 40, 60]


@pytest.mark.slow  # trains a tiny net for a real log
def test_parse_log_cli_writes_parse_log_csvs(real_log, tmp_path):
    result = CliRunner().invoke(cli, ["parse-log", str(real_log), "--csv", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    assert "top-10 mean val accuracy" in result.output
    assert (tmp_path / "t.test.csv").read_text().splitlines()[0] == "NumIters,Seconds,LearningRate,accuracy"
    assert (tmp_path / "t.train.csv").read_text().splitlines()[0] == "NumIters,Seconds,LearningRate,loss"


@pytest.mark.slow  # trains a tiny net for a real log
def test_report_over_gen_runs_uses_their_treatment_json(real_log, tmp_path):
    result = CliRunner().invoke(cli, ["report", str(real_log.parent.parent), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [(r["name"], r["max_iter"], r["last_iteration"]) for r in data["runs"]] == [("half0A", 60, 60)]
    assert data["runs"][0]["score"] == pytest.approx(logs.score(logs.parse_file(real_log).accuracies()))
    assert data["unrecognised"] == ["data"]


def test_report_on_a_missing_folder_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "does not exist" in result.output
