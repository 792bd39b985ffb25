"""Transplant and training on real Caffe (CPU, the small architecture, tiny real-image LMDBs).

Two bases are trained once per module; transfers are transplanted from them, trained, killed and
resumed, and their blobs compared bit for bit with the bases'.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from caffe_transfer.cli import cli
from caffe_transfer.common import caffe_env
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.lmdb import BuildOptions, build
from caffe_transfer.model.treatments import parse
from caffe_transfer.runs import logs
from caffe_transfer.runs.folder import Run, State
from caffe_transfer.runs.gen import GenOptions, write_runs
from caffe_transfer.runs.train import start, train
from caffe_transfer.runs.transplant import checksum, read_caffemodel, transplant

CLASSES = 4  # per half
SOLVER = {"max_iter": 80, "snapshot": 40, "test_interval": 40, "test_iter": 2, "display": 10,
          "stepsize": 1000}
CLI = str(Path(sys.executable).parent / "caffe-transfer")


def _image(c: int, rng, size: int = 32) -> np.ndarray:
    """Stripes whose angle, frequency and colours depend on the class, with random phase and noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    angle, freq = np.pi * c / (2 * CLASSES), 0.15 + 0.05 * (c % 3)
    wave = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 2 * np.pi))
    rgb = np.stack([wave * (0.4 + 0.6 * ((c >> k) & 1)) for k in range(3)], -1)
    return (127 + 100 * rgb + rng.normal(0, 20, rgb.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """half0A/half0B train and valid LMDBs (4 classes each) from real PNG files, via make-lmdb."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for half, offset in (("A", 0), ("B", CLASSES)):
        for subset, count in (("train", 60), ("valid", 25)):
            lines = []
            for c in range(CLASSES):
                folder = root / "images" / f"{half}{subset}" / f"c{c}"
                folder.mkdir(parents=True)
                for i in range(count):
                    Image.fromarray(_image(c + offset, rng)).save(folder / f"{i}.png")
                    lines.append(f"{half}{subset}/c{c}/{i}.png {c}\n")
            dataset = root / f"half0{half}_{subset}"
            dataset.mkdir()
            (dataset / "files.txt").write_text("".join(lines))
            build(dataset / "files.txt", root / "images", dataset, BuildOptions(resize=32, workers=2),
                  progress=False)
    return root


def _gen(runs: Path, name: str, data_root: Path, **solver) -> Path:
    t = parse(name)
    options = GenOptions(arch="small", data_root=data_root, fc8_outputs=CLASSES, gpu=False,
                         solver={**SOLVER, **solver})
    write_runs({runs / t.name: t}, options)
    return runs / t.name


@pytest.fixture(autouse=True)
def one_blas_thread(monkeypatch):
    # Small matrices: one OpenBLAS thread is faster than two on these 2-core machines.
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory) -> Path:
    """A runs folder with baseA and baseB trained to the end."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    runs = tmp_path_factory.mktemp("runs")
    for name in ("half0A", "half0B"):
        result = train(_gen(runs, name, data_root), progress=False)
        assert result.state is State.DONE and result.iteration == SOLVER["max_iter"]
    return runs


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# --- transplant ------------------------------------------------------------------------------
@pytest.mark.slow  # trains with real Caffe
@pytest.mark.parametrize("name,frozen", [("transfer0A0B_1_3", True), ("transfer-ft0A0B_1_3", False)])
def test_transplant_json_lists_copied_and_filler_layers(runs, data_root, name, frozen):
    run_dir = _gen(runs, name, data_root)
    result = transplant(run_dir)
    record = json.loads((run_dir / "transplant.json").read_text())
    base = runs / "half0A" / "snapshots" / f"half0A_iter_{SOLVER['max_iter']}.caffemodel"
    assert record["base"] == str(base) and record["seed"] == result.seed
    layers = record["layers"]
    assert [entry["layer"] for entry in layers] == [
        "conv1", "conv2", "conv3", "conv4-new", "conv5-new", "fc6-new", "fc7-new", "fc8-new"]
    for entry in layers[:3]:
        assert (entry["action"], entry["from_run"], entry["from_layer"], entry["frozen"]) == (
            "copied", "half0A", entry["layer"], frozen)
    assert all(e["action"] == "filler" and not e["frozen"] and "from_run" not in e for e in layers[3:])
    # The checksums are those of the blobs in the written file, and the copies equal the base.
    init, source = read_caffemodel(result.init), read_caffemodel(base)
    for entry in layers:
        blobs = init[entry["layer"]]
        assert [b["shape"] for b in entry["blobs"]] == [list(a.shape) for a in blobs]
        assert [b["sha256"] for b in entry["blobs"]] == [checksum(a) for a in blobs]
        if entry["action"] == "copied":
            assert all(_same(a, b) for a, b in zip(blobs, source[entry["layer"]]))


@pytest.mark.slow  # trains with real Caffe
def test_transplant_is_repeatable_by_its_seed(runs, data_root, tmp_path):
    run_dir = _gen(runs, "transfer1A1B_1_2", data_root)
    first = transplant(run_dir, base=runs / "half0A" / "snapshots" / "half0A_iter_80.caffemodel",
                       out=tmp_path / "a.caffemodel")
    again = transplant(run_dir, base=runs / "half0A" / "snapshots" / "half0A_iter_80.caffemodel",
                       out=tmp_path / "b.caffemodel")
    other = transplant(run_dir, base=runs / "half0A" / "snapshots" / "half0A_iter_80.caffemodel",
                       out=tmp_path / "c.caffemodel", seed=first.seed + 1)
    assert first.layers == again.layers
    assert [e["blobs"] for e in other.layers[:2]] == [e["blobs"] for e in first.layers[:2]]
    assert all(o["blobs"] != f["blobs"] for o, f in zip(other.layers[2:], first.layers[2:]))


@pytest.mark.slow  # trains with real Caffe
def test_random_frozen_needs_no_base_and_records_its_seed(runs, data_root):
    run_dir = _gen(runs, "nolearn_1_4", data_root)
    result = transplant(run_dir, seed=7)
    record = json.loads(result.record.read_text())
    assert record["seed"] == 7 and record["base"] is None
    assert [(e["action"], e["frozen"]) for e in record["layers"]] == [("filler", True)] * 4 + [("filler", False)] * 4
    with pytest.raises(CaffeTransferError, match="takes no --base"):
        transplant(run_dir, base=result.init)


def _protected(run_dir: Path):
    """transplant must fail and leave no init weights or record behind."""
    assert not (run_dir / "init.caffemodel").exists() and not (run_dir / "transplant.json").exists()


def _edited_base(runs: Path, tmp_path: Path, edit) -> Path:
    pb2 = caffe_env.caffe_pb2()
    net = pb2.NetParameter()
    net.ParseFromString((runs / "half0A" / "snapshots" / "half0A_iter_80.caffemodel").read_bytes())
    edit(net)
    path = tmp_path / "edited.caffemodel"
    path.write_bytes(net.SerializeToString())
    return path


def _drop_conv2(net) -> None:
    del net.layer[[layer.name for layer in net.layer].index("conv2")]


def _reshape_conv3(net) -> None:
    blob = next(layer for layer in net.layer if layer.name == "conv3").blobs[0]
    blob.shape.dim[0] = 12
    del blob.data[len(blob.data) // 2:]


@pytest.mark.parametrize("edit,message", [
    (_drop_conv2, r"has no layer 'conv2'"),
    (_reshape_conv3, r"layer 'conv3' blob 0: base .* has shape \[12, 16, 3, 3\], the net needs \[24, 16, 3, 3\]"),
])
@pytest.mark.slow  # trains with real Caffe
def test_a_base_that_does_not_fit_is_refused_before_anything_is_written(runs, data_root, tmp_path, edit, message):
    run_dir = _gen(tmp_path / "r", "transfer0B0A_1_3", data_root)
    base = _edited_base(runs, tmp_path, edit)
    result = CliRunner().invoke(cli, ["transplant", str(run_dir), "--base", str(base)])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert re.search(message, result.output), result.output
    _protected(run_dir)


def test_a_file_that_is_not_a_caffemodel_is_refused(data_root, tmp_path):
    run_dir = _gen(tmp_path, "transfer0B0A_1_3", data_root)
    for content in (b"not a net at all \xff\xfe", b""):
        bad = tmp_path / "bad.caffemodel"
        bad.write_bytes(content)
        with pytest.raises(CaffeTransferError, match="is not a .caffemodel"):
            transplant(run_dir, base=bad)
    _protected(run_dir)


def test_nets_trained_from_scratch_have_nothing_to_transplant(data_root, tmp_path):
    run_dir = _gen(tmp_path, "half0B", data_root)
    with pytest.raises(CaffeTransferError, match=r"half0B \(base\) trains from scratch"):
        transplant(run_dir)
    _protected(run_dir)


def test_a_transfer_whose_base_is_not_trained_names_the_run_to_train(data_root, tmp_path):
    run_dir = _gen(tmp_path, "transfer0A0B_1_2", data_root)
    _gen(tmp_path, "half0A", data_root)
    for action in (transplant, train):
        with pytest.raises(CaffeTransferError, match=r"train the base first \(caffe-transfer train .*half0A\)"):
            action(run_dir)
        _protected(run_dir)


def test_a_gpu_solver_on_a_cpu_only_caffe_is_a_clear_error(data_root, tmp_path):
    if caffe_env.cuda_build():
        pytest.skip("this Caffe is built with CUDA")
    t = parse("half0A")
    write_runs({tmp_path / "g": t}, GenOptions(arch="small", data_root=data_root, fc8_outputs=CLASSES))
    with pytest.raises(CaffeTransferError, match="solver_mode: GPU but this Caffe is CPU-only"):
        train(tmp_path / "g", progress=False)


def test_a_folder_gen_did_not_write_is_not_a_run(tmp_path):
    result = CliRunner().invoke(cli, ["train", str(tmp_path)])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert f"{tmp_path} is not a run folder: no treatment.json" in result.output


def test_a_failing_caffe_is_reported_with_its_fatal_line(tmp_path):
    t = parse("half0A")
    write_runs({tmp_path / "r": t}, GenOptions(arch="small", data_root=tmp_path / "no-data", fc8_outputs=CLASSES,
                                               gpu=False, solver=SOLVER))
    with pytest.raises(CaffeTransferError, match=r"caffe train of half0A failed \(exit -?\d+\): F\S* .*Check failed: mdb_status.*; full log: "):
        train(tmp_path / "r", progress=False)
    assert "no-data" in (tmp_path / "r" / "train.log").read_text()


# --- both routes -----------------------------------------------------------------------------
@pytest.mark.slow  # trains with real Caffe
def test_transplant_and_caffes_own_route_start_from_the_sameread_caffemodel(runs, data_root, tmp_path):
    """`caffe train -weights init.caffemodel` (ours) and `caffe train -weights BASE` (Caffe's
    name matching, via run.sh) snapshot at iteration 0: the first n layers are the base's in both."""
    base = read_caffemodel(runs / "half0B" / "snapshots" / "half0B_iter_80.caffemodel")
    ours = _gen(tmp_path / "ours", "transfer-ft0B0A_1_4", data_root, max_iter=0, snapshot=0)
    caffes = _gen(tmp_path / "caffes", "transfer-ft0B0A_1_4", data_root, max_iter=0, snapshot=0)
    for d in (ours, caffes):
        (d.parent / "half0B").symlink_to(runs / "half0B")
    assert train(ours, progress=False).state is State.DONE
    proc = subprocess.run(["bash", str(caffes / "run.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "-weights ../half0B/snapshots/half0B_iter_80.caffemodel" in proc.stdout
    a = read_caffemodel(ours / "snapshots" / "transfer-ft0B0A_1_4_iter_0.caffemodel")
    b = read_caffemodel(caffes / "snapshots" / "transfer-ft0B0A_1_4_iter_0.caffemodel")
    for layer in ("conv1", "conv2", "conv3", "conv4"):
        assert all(_same(x, y) and _same(x, z) for x, y, z in zip(a[layer], b[layer], base[layer]))
    assert set(a) == set(b) == {"conv1", "conv2", "conv3", "conv4", "conv5-new", "fc6-new", "fc7-new", "fc8-new"}


# --- training --------------------------------------------------------------------------------
@pytest.mark.slow  # trains with real Caffe
@pytest.mark.parametrize("name", ["transfer0A0B_1_3", "transfer-ft0A0B_1_3", "transfer0B0B_1_3"])
def test_trained_transfers_keep_frozen_blobs_and_move_the_rest(runs, data_root, name):
    run_dir = runs / name
    if not run_dir.exists():
        _gen(runs, name, data_root)
    result = train(run_dir, progress=False)
    assert result.state is State.DONE
    run = Run.load(run_dir)
    final, init = read_caffemodel(run.final_model), read_caffemodel(run.init_weights)
    base = read_caffemodel(run.base_weights())
    for role in run.roles():
        got, began = final[role.name], init[role.name]
        if role.frozen:
            assert all(_same(g, b) for g, b in zip(got, began)), f"{name}: frozen {role.name} moved"
            assert all(_same(g, b) for g, b in zip(got, base[role.layer])), f"{name}: {role.name} is not the base's"
        else:
            assert all(not np.array_equal(g, b) for g, b in zip(got, began)), f"{name}: {role.name} did not train"
    accuracies = logs.read_run(run_dir).accuracies()
    assert len(accuracies) == 3 and all(0 <= a <= 1 for a in accuracies)


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"trainer exited early: {log.read_text()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {log} after {timeout} s")


@pytest.mark.slow  # trains with real Caffe
def test_stopped_and_killed_runs_resume_to_one_continuous_log(data_root, tmp_path):
    run_dir = _gen(tmp_path, "half0A", data_root, max_iter=160, snapshot=40, test_interval=20)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    log = run_dir / "train.log"

    # SIGTERM: Caffe snapshots where it is, and the trainer says so.
    proc = subprocess.Popen([CLI, "train", str(run_dir), "--quiet"], env=env, stdout=subprocess.PIPE, text=True)
    _wait_for(log, "Iteration 50,", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    stopped_at = Run.load(run_dir).resume_state().iteration
    assert proc.returncode == 130 and f"stopped at iteration {stopped_at} with a snapshot; run again to resume" in out
    # Caffe runs on while this reads its log: how far past 50 depends on the machine's load
    assert 50 <= stopped_at < 120

    # SIGKILL: nothing is saved, Caffe dies with the trainer, the next start resumes from the last snapshot.
    periodic = (stopped_at // 40 + 1) * 40  # Caffe's next own snapshot after the signal's
    proc = subprocess.Popen([CLI, "train", str(run_dir), "--quiet"], env=env, stdout=subprocess.PIPE, text=True)
    _wait_for(log, f"Iteration {periodic + 10},", proc)
    proc.kill()
    proc.wait()
    time.sleep(1)
    size = log.stat().st_size
    time.sleep(1.5)
    assert log.stat().st_size == size, "caffe kept running after its trainer was killed"
    resumed = Run.load(run_dir).resume_state().iteration
    assert resumed % 40 == 0 and resumed >= periodic, resumed  # Caffe's own, not the signal's

    assert train(run_dir, progress=False).state is State.DONE
    text = log.read_text()
    sessions = [line for line in text.splitlines() if line.startswith("==> caffe-transfer train")]
    assert len(sessions) == 3
    assert "starting from the filler init" in sessions[0]
    assert f"resuming from half0A_iter_{stopped_at}.solverstate" in sessions[1]
    assert f"resuming from half0A_iter_{resumed}.solverstate" in sessions[2]
    tables = logs.parse_file(log)
    assert [r["NumIters"] for r in tables.test] == list(range(0, 161, 20))
    assert [r["NumIters"] for r in tables.train] == list(range(0, 161, 10))
    assert Run.load(run_dir).finished and train(run_dir, progress=False).already_done


@pytest.mark.slow  # trains with real Caffe
def test_resume_skips_a_cut_snapshot_and_repoints_a_moved_one(runs, tmp_path):
    moved = tmp_path / "elsewhere" / "half0B"
    shutil.copytree(runs / "half0B", moved)
    pb2 = caffe_env.caffe_pb2()
    state_path = moved / "snapshots" / "half0B_iter_80.solverstate"
    state = pb2.SolverState()
    state.ParseFromString(state_path.read_bytes())
    state.learned_net = "/gone/half0B/snapshots/half0B_iter_80.caffemodel"
    state_path.write_bytes(state.SerializeToString())
    run = Run.load(moved)
    assert (run.resume_state().iteration, run.resume_state().state) == (80, state_path)
    state.ParseFromString(state_path.read_bytes())
    assert state.learned_net == "snapshots/half0B_iter_80.caffemodel"
    state_path.write_bytes(state_path.read_bytes()[:7])  # cut short by a kill
    assert run.resume_state().state == moved / "snapshots" / "half0B_iter_40.solverstate"
    assert start(run).args == ["-snapshot", "snapshots/half0B_iter_40.solverstate"]
