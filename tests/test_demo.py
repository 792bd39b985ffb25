"""The demo's quick preset end to end on real Caffe, interrupted once and run again; and the grid
scheduler's rules (bases first, failures hold back only their dependants)."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caffe_transfer import demo
from caffe_transfer.common.caffe_env import caffe_pb2
from caffe_transfer.grid.scheduler import run_grid
from caffe_transfer.model.treatments import Kind, parse
from caffe_transfer.runs import logs
from caffe_transfer.runs.folder import Run, State
from caffe_transfer.runs.gen import GenOptions, write_runs
from caffe_transfer.runs.train import HEADER

from .conftest import make_data_root

pytestmark = pytest.mark.slow  # trains the demo's grid

CLI = str(Path(sys.executable).parent / "caffe-transfer")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """The quick demo, stopped by SIGINT once a few runs have finished, then run to the end."""
    if not (demo.FASHION_MNIST / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed at {demo.FASHION_MNIST} (apt-get install {demo.PACKAGE})")
    out = tmp_path_factory.mktemp("demo") / "quick"
    proc = subprocess.Popen([CLI, "demo", "--out", str(out), "--preset", "quick", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while len(list((out / "runs").glob("*/*/snapshots/*_iter_40.caffemodel"))) < 4:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    first, _ = proc.communicate(timeout=120)
    done_first = {p.parent.parent.name: p.stat().st_mtime_ns
                  for p in (out / "runs").glob("*/*/snapshots/*_iter_40.caffemodel")}
    states_first = {p.parent.parent.name for p in (out / "runs").glob("*/*/snapshots/*.solverstate")}
    second = subprocess.run([CLI, "demo", "--out", str(out), "--preset", "quick"], capture_output=True, text=True)
    return out, proc.returncode, first, done_first, states_first, second


def test_interrupted_demo_stops_with_snapshots_and_continues(quick_demo):
    out, code, first, done_first, states_first, second = quick_demo
    assert code == 130 and "run the same command again to continue" in first, first[-2000:]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "30/30 runs trained" in second.stdout
    for name, mtime in done_first.items():
        run = Run.load(out / "runs" / "halves" / name)
        assert run.final_model.stat().st_mtime_ns == mtime, f"{name} was retrained"
        assert run.log.read_text().count(HEADER) == 1
    for name in re.findall(r"^  (\S+): stopped", first, re.M):
        # stopped mid-way: resumed from its snapshot; stopped before Caffe saved one: started again
        log = (out / "runs" / "halves" / name / "train.log").read_text()
        assert ("resuming from" in log) == (name in states_first), name


def test_every_run_trained_and_every_transfer_came_from_its_base(quick_demo):
    out = quick_demo[0]
    runs = [Run.load(d) for d in sorted((out / "runs").glob("*/*"))]
    assert sorted(r.name for r in runs) == sorted(t.name for t in demo.grid(demo.PRESETS["quick"])["halves"])
    for run in runs:
        assert run.finished, run.name
        tables = logs.read_run(run.dir)
        # (a run the interrupt reached during Caffe's extra test pass after max_iter has
        # finished training without that last evaluation)
        assert tables.accuracies() and tables.last_iteration == run.max_iter
        if run.treatment.kind is not Kind.TRANSFER:
            continue
        record = json.loads((run.dir / "transplant.json").read_text())
        base = Run.load(run.base_dir)
        assert record["base"] == str(base.final_model)
        assert record["base_sha256"] == hashlib.sha256(base.final_model.read_bytes()).hexdigest()
        copied = [e for e in record["layers"] if e["action"] == "copied"]
        assert len(copied) == run.treatment.n
        assert all(e["from_run"] == base.name == run.treatment.base.name for e in copied)


def test_the_report_has_all_its_parts(quick_demo):
    out = quick_demo[0]
    report = out / "report"
    for name in ("figure2.png", "figure2.pdf", "table1.csv", "runs.csv", "layer_means.csv", "report.txt",
                 "numbers.json", "findings.md"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    summary = json.loads((report / "numbers.json").read_text())
    assert all(v is not None for family in ("BnB", "BnB+", "AnB", "AnB+") for v in summary["layers"][family])
    assert summary["table1"]["1-7"]["over_baseB"] is not None
    findings = (report / "findings.md").read_text()
    assert findings.count("\n## ") == 5 and "Fragile co-adaptation" in findings
    assert findings.count("not judged (a smoke run") == 10  # the table and each section
    assert len((report / "runs.csv").read_text().splitlines()) == 31


def test_demo_refuses_another_preset_in_the_same_folder(quick_demo):
    out = quick_demo[0]
    result = subprocess.run([CLI, "demo", "--out", str(out), "--preset", "standard"], capture_output=True, text=True)
    assert result.returncode == 1 and "holds a demo with preset 'quick', not 'standard'" in result.stderr


def test_a_failed_base_holds_back_only_its_transfers(tmp_path):
    """half0A's data do not exist, so it fails; its transfer is held; half0B still trains."""
    options = dict(arch="small", fc8_outputs=3, gpu=False,
                   solver={"max_iter": 10, "test_interval": 10, "test_iter": 1, "snapshot": 10})
    good = make_data_root(tmp_path / "good", {"half0B_train", "half0B_valid"}, 32, 40, 3, caffe_pb2())
    runs = tmp_path / "runs"
    write_runs({runs / "half0A": parse("half0A"), runs / "transfer0A0B_1_2": parse("transfer0A0B_1_2")},
               GenOptions(data_root=tmp_path / "missing", **options))
    write_runs({runs / "half0B": parse("half0B")}, GenOptions(data_root=good, **options))
    result = run_grid([runs / "transfer0A0B_1_2", runs / "half0B", runs / "half0A"], workers=2, progress=False)
    states = {p.name: o.state for p, o in result.outcomes.items()}
    assert states == {"half0A": State.FAILED, "transfer0A0B_1_2": State.WAITING, "half0B": State.DONE}
    assert "its base half0A did not finish" in result.outcomes[runs / "transfer0A0B_1_2"].detail
    assert not (runs / "transfer0A0B_1_2" / "train.log").exists()


def test_the_standard_preset_judges_the_repeated_points_against_their_own_spreads(tmp_path):
    """The standard preset end to end: every point of Figure 2 on the random halves has repeats,
    so a spread, and findings.md judges specificity (groups of several n) against their own
    spreads; the base's spread rests on 2 runs and the seeded nets ran once (one seed), so the
    findings that compare them are not judged at this scale, in every run of the preset."""
    if not (demo.FASHION_MNIST / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed at {demo.FASHION_MNIST} (apt-get install {demo.PACKAGE})")
    result = subprocess.run([CLI, "demo", "--out", str(tmp_path / "standard")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "standard" / "report" / "numbers.json").read_text())
    assert summary["base_sd"] is not None
    assert all(sd is not None for family in ("BnB", "BnB+", "AnB", "AnB+") for sd in summary["layers_sd"][family])
    for run in summary["runs"]:
        assert run["evaluations"] > 10 and run["last_iteration"] == run["max_iter"], run["name"]
    findings = (tmp_path / "standard" / "report" / "findings.md").read_text()
    assert "Each comparison's margin (±) comes from the spread of its own points' repeats" in findings
    assert findings.count("\n## ") == 5 and "a smoke run" not in findings
    not_judged = ("Fragile co-adaptation", "Transfer plus fine-tuning generalizes better",
                  "Dissimilar tasks transfer worse", "Random frozen filters are poor")
    assert all(f"## {name}: not judged at this scale" in findings for name in not_judged)
    assert findings.count(": not judged at this scale") == 4 and "## Specificity of higher layers: " in findings
    assert "- why: baseB ran 2 times (a spread on 1 degree of freedom)" in findings
    assert "- why: full net ran once" in findings
