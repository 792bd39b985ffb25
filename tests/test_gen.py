"""Generated run folders: equivalent to the authors' 170 nets, loadable and trainable in real Caffe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from caffe_transfer.cli import cli
from caffe_transfer.common import caffe_env, protos
from caffe_transfer.model.treatments import Kind, authors_grid, parse
from caffe_transfer.runs import gen

from .conftest import make_data_root

GRID = authors_grid()
DATASETS = {d for t in GRID for d in (t.train_set, t.val_set, t.mean_set)}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, pb2):
    return make_data_root(tmp_path_factory.mktemp("data"), DATASETS, size=256, count=4, classes=4, pb2=pb2)


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(cli, ["gen", "--all", "--out", str(out), "--data-root", str(data_root)])
    assert result.exit_code == 0, result.output
    return out


def _first_of_each_kind_fast(grid):
    """The fast loop compares one net of each family (and natman's); the slow run compares all 170."""
    seen, out = set(), []
    for t in grid:
        kind = (t.family, t.split == "natman")
        out.append(t if kind not in seen else pytest.param(t, marks=pytest.mark.slow))
        seen.add(kind)
    return out


@pytest.mark.parametrize("treatment", _first_of_each_kind_fast(GRID), ids=lambda t: t.name)
def test_generated_net_and_solver_equal_the_authors(treatment, grid_dir, reference):
    """After Caffe's own upgrade tools, only data paths, DB backend and file names differ."""
    theirs_dir = reference / "results" / treatment.name
    ours = protos.read_net(grid_dir / treatment.name / "train_val.prototxt")
    for phase, theirs_file, weights in (("TRAIN", "imagenet_train.prototxt", True),
                                        ("TEST", "imagenet_val.prototxt", False)):
        theirs = protos.comparable(protos.read_net(theirs_dir / theirs_file), weights)
        mine = protos.comparable(protos.phase_net(ours, phase), weights)
        assert protos.net_diff(mine, theirs) == "", f"{phase} net of {treatment.name}"
    mine = protos.comparable_solver(protos.read_solver(grid_dir / treatment.name / "solver.prototxt"))
    theirs = protos.comparable_solver(protos.read_solver(theirs_dir / "imagenet_solver.prototxt"))
    assert mine == theirs


@pytest.mark.parametrize("treatment", GRID, ids=lambda t: t.name)
def test_generated_net_uses_the_right_datasets_and_mean(treatment, grid_dir, data_root):
    net = protos.read_net(grid_dir / treatment.name / "train_val.prototxt")
    train, test = (protos.phase_net(net, p).layer[0] for p in ("TRAIN", "TEST"))
    assert Path(train.data_param.source) == data_root.resolve() / treatment.train_set / "lmdb"
    assert Path(test.data_param.source) == data_root.resolve() / treatment.val_set / "lmdb"
    mean = data_root.resolve() / treatment.mean_set / "mean.binaryproto"
    assert Path(train.transform_param.mean_file) == Path(test.transform_param.mean_file) == mean


def _small_batch_copy(run_dir: Path, batch: int = 2) -> Path:
    net = protos.read_net(run_dir / "train_val.prototxt")
    for layer in net.layer:
        if layer.type == "Data":
            layer.data_param.batch_size = batch
    path = run_dir / "train_val.small-batch.prototxt"
    path.write_text(text_format.MessageToString(net))
    return path


@pytest.mark.slow
def test_every_generated_net_instantiates_in_pycaffe(grid_dir, caffe):
    for treatment in GRID:
        path = _small_batch_copy(grid_dir / treatment.name)
        for phase in (caffe.TRAIN, caffe.TEST):
            net = caffe.Net(str(path), phase)
            assert net.blobs["data"].data.shape == (2, 3, 227, 227), treatment.name
            names = [r["name"] for r in json.loads((grid_dir / treatment.name / "treatment.json").read_text())["layers"]]
            assert list(net.params) == names, treatment.name
        path.unlink()


def test_deploy_net_instantiates(grid_dir, caffe):
    net = caffe.Net(str(grid_dir / "transfer0A0B_1_3" / "deploy.prototxt"), caffe.TEST)
    assert list(net.params)[-1] == "fc8-new"
    assert net.blobs["prob"].data.shape == (10, 1000)


ONE_OF_EACH = ["half0A", "transfer0A0A_1_2", "transfer1B1A_1_5", "transfer-ft0A0B_1_3",
               "nolearn_1_3", "reduced-0010"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ONE_OF_EACH)
def test_sgd_steps_leave_frozen_blobs_bit_identical(name, tmp_path, data_root, caffe, monkeypatch):
    """A few steps of the real Caffe solver: frozen blobs do not move, trainable blobs do."""
    treatment = parse(name)
    run = tmp_path / name
    gen.write_runs({run: treatment}, gen.GenOptions(
        data_root=data_root, gpu=False, solver={"max_iter": 3, "test_iter": 1, "test_interval": 100,
                                                "display": 1, "base_lr": 0.05}))
    small = _small_batch_copy(run)
    solver_text = (run / "solver.prototxt").read_text().replace('"train_val.prototxt"', f'"{small.name}"')
    (run / "solver.prototxt").write_text(solver_text + "test_initialization: false\n")
    monkeypatch.chdir(run)
    caffe.set_mode_cpu()
    solver = caffe.SGDSolver("solver.prototxt")
    before = {k: [b.data.copy() for b in v] for k, v in solver.net.params.items()}
    solver.step(3)
    roles = json.loads((run / "treatment.json").read_text())["layers"]
    assert solver.iter == 3
    for role in roles:
        after = [b.data for b in solver.net.params[role["name"]]]
        if role["frozen"]:
            for b0, b1 in zip(before[role["name"]], after):
                assert np.array_equal(b0, b1), f"frozen {role['name']} moved"
        else:
            # Weights get gradient and decay; a zero-initialised bias may legitimately not move
            # in 3 steps, so the weight blob is what must change.
            assert not np.array_equal(before[role["name"]][0], after[0]), f"trainable {role['name']} did not move"
    assert any(r["frozen"] for r in roles) == (treatment.kind in (Kind.TRANSFER, Kind.RANDOM) and not treatment.fine_tune)


def test_treatment_json_describes_the_transfer(tmp_path):
    run = tmp_path / "r"
    gen.write_runs({run: parse("AnB", n=3, split=0)}, gen.GenOptions(data_root=tmp_path / "data"))
    desc = json.loads((run / "treatment.json").read_text())
    assert desc["name"] == "transfer0A0B_1_3" and desc["base"] == "half0A"
    assert desc["mean_set"] == "half0A_train" and desc["train_set"] == "half0B_train"
    assert desc["base_weights"] == str(tmp_path.resolve() / "half0A" / "snapshots" / "half0A_iter_450000.caffemodel")
    assert [l["name"] for l in desc["layers"] if l["frozen"]] == ["conv1", "conv2", "conv3"]


def test_fc8_outputs_classes_gives_the_n_way_head(tmp_path):
    run = tmp_path / "r"
    gen.write_runs({run: parse("transfernatmanBA_1_2")}, gen.GenOptions(fc8_outputs="classes"))
    net = protos.read_net(run / "train_val.prototxt")
    assert [l.inner_product_param.num_output for l in net.layer if l.name == "fc8-new"] == [449]


def test_small_architecture_keeps_the_eight_weight_layers_in_order(tmp_path, caffe, pb2):
    root = make_data_root(tmp_path / "data", {"half0B_train", "half0B_valid", "half0A_train"},
                          size=32, count=4, classes=4, pb2=pb2)
    run = tmp_path / "r"
    gen.write_runs({run: parse("transfer0A0B_1_4")}, gen.GenOptions(arch="small", data_root=root, fc8_outputs=5))
    net = caffe.Net(str(run / "train_val.prototxt"), caffe.TRAIN)
    assert list(net.params) == ["conv1", "conv2", "conv3", "conv4", "conv5-new", "fc6-new", "fc7-new", "fc8-new"]
    assert net.params["fc8-new"][0].data.shape == (5, 64)
    assert net.blobs["data"].data.shape[2:] == (14, 14)


def test_gen_refuses_to_overwrite_a_run_with_snapshots(tmp_path):
    run = tmp_path / "half0A"
    runner = CliRunner()
    assert runner.invoke(cli, ["gen", "-t", "half0A", "--out", str(run)]).exit_code == 0
    assert (run / "snapshots").is_dir()  # made by gen: Caffe needs the prefix's folder
    (run / "snapshots" / "half0A_iter_10000.caffemodel").write_bytes(b"weights")
    before = (run / "solver.prototxt").read_text()
    result = runner.invoke(cli, ["gen", "-t", "half0A", "--out", str(run), "--solver", "max_iter=10"])
    assert result.exit_code == 1 and "already holds snapshots" in result.output
    assert (run / "solver.prototxt").read_text() == before
    result = runner.invoke(cli, ["gen", "-t", "half0A", "--out", str(run), "--solver", "max_iter=10", "--force"])
    assert result.exit_code == 0 and "max_iter: 10\n" in (run / "solver.prototxt").read_text()


@pytest.mark.parametrize("args, needle, code", [
    (["-t", "AxB", "--n", "3", "--split", "0"], "unknown treatment 'AxB'", 1),
    (["-t", "AnB", "--n", "0", "--split", "0"], "'--n': 0 is not in the range 1<=x<=7", 2),
    (["-t", "AnB", "--n", "8", "--split", "0"], "'--n': 8 is not in the range 1<=x<=7", 2),
    (["-t", "AnB", "--split", "0"], "needs n in 1..7", 1),
    (["-t", "AnB", "--n", "3", "--split", "0", "--arch", "vgg"], "'--arch': 'vgg' is not one of", 2),
    (["-t", "AnB", "--n", "3", "--split", "0", "--backend", "hdf5"], "'--backend': 'hdf5' is not one of", 2),
    (["-t", "AnB", "--n", "3", "--split", "0", "--solver", "max_iters=3"], "unknown solver field 'max_iters'", 2),
    (["-t", "AnB", "--n", "3", "--split", "0", "--fc8-outputs", "many"], "'many': expected a positive number", 2),
    ([], "gen needs --treatment", 2),
])
def test_gen_errors_are_one_line_and_write_nothing(args, needle, code, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["gen", *args, "--out", str(out)])
    assert result.exit_code == code
    assert needle in result.output and result.output.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["make-lmdb", "list.txt", "images", "{out}", "--workers", "0"], "'--workers': 0 is not in the range x>=1"),
    (["plan", "--gpus", "0", "--out", "{out}"], "'--gpus': 0 is not in the range x>=1"),
    (["plan", "--iter-seconds", "-1", "--out", "{out}"], "'--iter-seconds': -1.0 is not in the range x>0"),
    (["demo", "--workers", "0", "--out", "{out}"], "'--workers': 0 is not in the range x>=1"),
    (["run-all", "{out}", "--cpu-workers", "0"], "'--cpu-workers': 0 is not in the range x>=1"),
    (["make-lmdb"], "Missing argument 'LIST_FILE'. (see caffe-transfer make-lmdb -h)"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_usage_errors_are_one_line_and_write_nothing(argv, needle, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [a.format(out=out) for a in argv], prog_name="caffe-transfer")
    assert result.exit_code == 2
    assert needle in result.output and result.output.count("\n") == 1
    assert not out.exists()


def test_unwritable_out_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(cli, ["gen", "-t", "half0A", "--out", str(blocker / "run")])
    assert result.exit_code == 1 and "cannot write run folder" in result.output
    assert result.output.count("\n") == 1


def test_console_script_help_lists_commands():
    exe = Path(sys.executable).parent / "caffe-transfer"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("doctor", "describe", "gen"):
        assert f"  {command} " in out


def test_doctor_finds_real_caffe():
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "caffe version 1.0.0" in result.output and "pycaffe" in result.output


@pytest.mark.parametrize("mode, cudnn", [("cuda:90", "not built in: Caffe's own GPU code"),
                                         ("cuda:80,90+cudnn9.13.0", "cuDNN 9.13.0 (layers run it")])
def test_doctor_passes_a_cuda_build_on_a_machine_without_gpus(mode, cudnn, tmp_path, monkeypatch):
    """As in a docker build of the CUDA image: the install is whole, the GPU is the machine's;
    the cuDNN the install script built with is named."""
    real = caffe_env.caffe_root()
    for name in ("bin", "lib", "python"):
        (tmp_path / name).symlink_to(real / name)
    (tmp_path / ".caffe-transfer-build").write_text(caffe_env.build_stamp().replace("mode=cpu", f"mode={mode}"))
    monkeypatch.setenv("CAFFE_ROOT", str(tmp_path))
    monkeypatch.setattr(caffe_env, "gpu_count", lambda: 0)
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "CUDA build, 0 GPU(s) visible" in result.output and "-> no GPU visible: check the driver" in result.output
    assert cudnn in result.output


def test_engine_caffe_gives_every_layer_caffes_own_code(tmp_path):
    """--engine caffe keeps a cuDNN build on the 2014 numerics: every convolution, pooling, ReLU,
    LRN and softmax of both nets names engine CAFFE; without it no layer names an engine."""
    pb2 = caffe_env.caffe_pb2()
    for engine, expected in (("caffe", {pb2.ConvolutionParameter.CAFFE}), (None, set())):
        run = tmp_path / str(engine)
        args = ["gen", "-t", "AnB", "--n", "3", "--split", "0", "--out", str(run)]
        result = CliRunner().invoke(cli, args + (["--engine", engine] if engine else []))
        assert result.exit_code == 0, result.output
        for file in ("train_val.prototxt", "deploy.prototxt"):
            net = protos.read_net(run / file)
            engines = {}
            for layer in net.layer:
                message = {"Convolution": "convolution_param", "Pooling": "pooling_param", "ReLU": "relu_param",
                           "LRN": "lrn_param"}.get(layer.type) or ("softmax_param" if "Softmax" in layer.type else None)
                if message:
                    param = getattr(layer, message)
                    engines[layer.name] = param.engine if param.HasField("engine") else None
            assert len(engines) >= 14, engines  # 5 conv, 3 pool, 7 ReLU, 2 LRN, softmax
            assert set(engines.values()) == (expected or {None}), (file, engines)
        assert json.loads((run / "treatment.json").read_text())["engine"] == engine


# --- the user's own command, as written (issue 28) --------------------------------------------
def test_gen_as_the_user_wrote_it_writes_the_authors_folder_here(tmp_path, monkeypatch):
    """`caffe-transfer gen --n 3 --treatment AnB` in an empty folder: split 0 and the authors'
    folder name, said in one line; the folder is, byte for byte, the one the explicit command
    writes at the same place."""
    exe = Path(sys.executable).parent / "caffe-transfer"
    proc = subprocess.run([str(exe), "gen", "--n", "3", "--treatment", "AnB"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    chose, wrote = proc.stdout.splitlines()
    assert wrote.startswith("wrote transfer0A0B_1_3 (A3B, split 0)")
    assert chose.startswith("chose split 0, ") and "--split 1|2|3|natman" in chose
    assert "folder ./transfer0A0B_1_3" in chose and "--out DIR" in chose
    assert [p.name for p in tmp_path.iterdir()] == ["transfer0A0B_1_3"]
    ours = tmp_path / "transfer0A0B_1_3"
    written = {p.relative_to(ours): p.read_bytes() for p in ours.rglob("*") if p.is_file()}
    folders = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_dir())
    ours.rename(tmp_path / "as-written")
    monkeypatch.chdir(tmp_path)
    args = ["gen", "--treatment", "AnB", "--n", "3", "--split", "0", "--out", "transfer0A0B_1_3"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert {p.relative_to(ours): p.read_bytes() for p in ours.rglob("*") if p.is_file()} == written
    assert sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_dir()) == folders
    assert {"solver.prototxt", "train_val.prototxt", "deploy.prototxt", "run.sh", "treatment.json"} <= \
        {str(p) for p in written}


@pytest.mark.parametrize("args, folder, split_chosen", [
    (["-t", "baseA"], "half0A", True),
    (["-t", "baseB"], "half0B", True),
    (["-t", "BnB", "--n", "2"], "transfer0B0B_1_2", True),
    (["-t", "AnA", "--n", "7"], "transfer0A0A_1_7", True),
    (["-t", "BnA", "--n", "1"], "transfer0B0A_1_1", True),
    (["-t", "AnB+", "--n", "5"], "transfer-ft0A0B_1_5", True),
    (["-t", "BnB+", "--n", "4"], "transfer-ft0B0B_1_4", True),
    (["-t", "A3B"], "transfer0A0B_1_3", True),
    (["-t", "AnB", "--n", "3", "--split", "natman"], "transfernatmanAB_1_3", False),
    (["-t", "random", "--n", "4"], "nolearn_1_4", False),
    (["-t", "full"], "netbase", False),
    (["-t", "transfer1A1B_1_2"], "transfer1A1B_1_2", False),
])
def test_every_short_form_gets_the_authors_folder_name(args, folder, split_chosen, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["gen", *args])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == [folder]
    assert ("split 0, the paper's first random split" in result.output) == split_chosen
    assert f"folder ./{folder}, the authors' name for it (or --out DIR)" in result.output.splitlines()[0]


def test_gen_with_both_given_chooses_nothing(tmp_path):
    result = CliRunner().invoke(cli, ["gen", "-t", "AnB", "--n", "3", "--split", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0 and "chose" not in result.output
    assert json.loads((tmp_path / "r" / "treatment.json").read_text())["name"] == "transfer1A1B_1_3"
