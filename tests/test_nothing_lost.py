"""Nothing of the user's is overwritten, nothing stale is reused (issue 29), on real Caffe (CPU,
the small net, tiny random-image LMDBs): outputs over inputs or over files the tool did not write
are refused, snapshots no log explains are kept, a hand-edited solver or a changed base is never
trained from silently, and a cut newest snapshot is passed over for the one before it; by
`caffe-transfer train` and by the run folder's run.sh (Caffe alone) alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from caffe_transfer.common import caffe_env
from caffe_transfer.runs.folder import Run, State
from caffe_transfer.runs.transplant import read_caffemodel

from .conftest import make_data_root

pytestmark = pytest.mark.slow
CLI = str(Path(sys.executable).parent / "caffe-transfer")
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
CLASSES = 3
SHORT = ["--solver", "max_iter=20", "--solver", "snapshot=10", "--solver", "test_interval=10",
         "--solver", "test_iter=1", "--solver", "display=5", "--solver", "stepsize=1000"]


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=ENV)


def _ok(*args: str | Path) -> subprocess.CompletedProcess:
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _refused(proc: subprocess.CompletedProcess, *fragments: str, above: bool = False, prefix: str = "Error: ") -> str:
    """Exit 1 and one error line on stderr holding every fragment (the last, with `above`: a
    build names each image it skips, and draws its bar, above it); the line. run.sh's lines
    have no `prefix`."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and (above or len(lines) == 1), proc.stdout + proc.stderr
    assert lines[-1].startswith(prefix) and all(f in lines[-1] for f in fragments), lines[-1]
    return lines[-1]


def _train(route: str, run_dir: Path) -> subprocess.CompletedProcess:
    """`caffe-transfer train`, or the folder's run.sh as SLURM tasks and Docker users run it."""
    if route == "train":
        return _cli("train", run_dir, "--quiet")
    return subprocess.run(["bash", str(run_dir / "run.sh")], capture_output=True, text=True, env=ENV)


def _prefix(route: str) -> str:
    return "Error: " if route == "train" else ""


def _gen(out: Path, data: Path, treatment: str, *options: str) -> Path:
    _ok("gen", "-t", treatment, "--out", out, "--arch", "small", "--cpu", "--data-root", data,
        "--fc8-outputs", CLASSES, *SHORT, *options)
    return out


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    datasets = {f"half0{h}_{s}" for h in "AB" for s in ("train", "valid")}
    return make_data_root(tmp_path_factory.mktemp("data"), datasets, 32, 24, CLASSES, caffe_env.caffe_pb2())


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """half0A trained to iteration 20, with snapshots at 10 and 20: the base of the transfers here."""
    run_dir = _gen(tmp_path_factory.mktemp("trained") / "half0A", data, "half0A")
    _ok("train", run_dir, "--quiet")
    return run_dir


@pytest.fixture
def runs(trained, tmp_path) -> Path:
    """A runs folder of this test's own, holding a copy of the trained base."""
    shutil.copytree(trained, tmp_path / "runs" / "half0A")
    return tmp_path / "runs"


# --- outputs over inputs, or over files the tool did not write ---------------------------------
def test_transplant_refuses_to_write_its_init_over_the_base(runs, data):
    transfer = _gen(runs / "transfer0A0B_1_2", data, "AnB", "--n", "2", "--split", "0")
    base = Run.load(runs / "half0A").final_model
    before = base.read_bytes()
    _refused(_cli("transplant", transfer, "--base", base, "--out", base), f"--out {base}", "is an input")
    _refused(_cli("transplant", transfer, "--out", base), "is an input")  # the base gen recorded
    assert base.read_bytes() == before and not base.with_name(f"{base.name}.json").exists()


def test_transplant_refuses_to_overwrite_a_file_it_did_not_write_unless_forced(runs, data, tmp_path):
    transfer = _gen(runs / "transfer0A0B_1_2", data, "AnB", "--n", "2", "--split", "0")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    _refused(_cli("transplant", transfer, "--out", notes), f"{notes} was not written by transplant", "--force")
    assert notes.read_text() == "my notes\n" and not (tmp_path / "notes.txt.json").exists()
    theirs = tmp_path / "init.caffemodel.json"
    theirs.write_text("{}\n")
    _refused(_cli("transplant", transfer, "--out", tmp_path / "init.caffemodel"), f"{theirs} was not written")
    assert theirs.read_text() == "{}\n" and not (tmp_path / "init.caffemodel").exists()

    own = tmp_path / "own.caffemodel"
    _ok("transplant", transfer, "--out", own)
    _ok("transplant", transfer, "--out", own)  # its own file, with its record: written again
    _ok("transplant", transfer, "--out", notes, "--force")
    assert json.loads((tmp_path / "notes.txt.json").read_text())["init"] == str(notes)


@pytest.mark.parametrize("name", ["solver.prototxt", "train_val.prototxt", "run.sh", "treatment.json"])
def test_gen_refuses_to_overwrite_the_users_own_files_unless_forced(data, tmp_path, name):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / name).write_text("# mine\n")
    proc = _cli("gen", "-t", "half0A", "--out", folder, "--arch", "small", "--cpu", "--data-root", data)
    _refused(proc, f"{folder / name} was not written by gen, or was edited since", "--force")
    assert [p.name for p in folder.iterdir()] == [name] and (folder / name).read_text() == "# mine\n"
    _gen(folder, data, "half0A", "--force")
    assert Run.load(folder).name == "half0A"


def test_gen_rewrites_its_own_folder_but_not_a_hand_edited_solver(data, tmp_path):
    folder = _gen(tmp_path / "half0A", data, "half0A")
    _gen(folder, data, "half0A", "--solver", "base_lr=0.02")  # gen's own files: written again
    assert "base_lr: 0.02" in (folder / "solver.prototxt").read_text()
    solver = folder / "solver.prototxt"
    solver.write_text(solver.read_text().replace("base_lr: 0.02", "base_lr: 0.5"))
    _refused(_cli("gen", "-t", "half0A", "--out", folder, "--arch", "small", "--cpu", "--data-root", data),
             f"{solver} was not written by gen, or was edited since")
    assert "base_lr: 0.5" in solver.read_text()


# --- snapshots no record explains ----------------------------------------------------------------
def _cut_before_first_snapshot(log: Path) -> None:
    text = log.read_text()
    log.write_text(text[: text.index("Snapshotting to binary proto file")])


@pytest.mark.parametrize("damage", [
    lambda log: log.unlink(),
    lambda log: log.write_text(""),
    _cut_before_first_snapshot,
    lambda log: log.write_bytes(os.urandom(4096)),
], ids=["deleted", "emptied", "cut", "garbage"])
def test_train_never_overwrites_snapshots_the_log_does_not_record(runs, damage):
    run_dir = runs / "half0A"
    damage(run_dir / "train.log")
    before = _digests(run_dir / "snapshots")
    line = _refused(_cli("train", run_dir, "--quiet"), "snapshots/half0A_iter_10.caffemodel is a snapshot that "
                    "train.log does not record", "move snapshots/ aside")
    assert _digests(run_dir / "snapshots") == before
    assert Run.load(run_dir).state() == (State.FAILED, line.removeprefix("Error: "))
    proc = subprocess.run(["bash", str(run_dir / "run.sh")], capture_output=True, text=True, env=ENV)  # Caffe alone
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stdout + proc.stderr
    assert "is a snapshot that train.log does not record, and training afresh would overwrite it" in lines[0]
    assert _digests(run_dir / "snapshots") == before

    shutil.move(run_dir / "snapshots", runs / "aside")  # as the line says: then it trains afresh
    _ok("train", run_dir, "--quiet")
    assert Run.load(run_dir).state() == (State.DONE, "")
    assert _digests(runs / "aside") == before


# --- what Caffe reads, as it is now -------------------------------------------------------------
@pytest.mark.parametrize("route", ["train", "run.sh"])
def test_a_hand_edited_solver_is_not_resumed_under(runs, route):
    run_dir = runs / "half0A"
    solver = run_dir / "solver.prototxt"
    solver.write_text(solver.read_text().replace("max_iter: 20", "max_iter: 30").replace("base_lr: 0.01",
                                                                                        "base_lr: 0.5"))
    log = (run_dir / "train.log").read_bytes()
    _refused(_train(route, run_dir), "half0A_iter_20.solverstate was made for another version of this run folder",
             "(solver.prototxt changed)" if route == "train" else "(solver changed)",
             "move snapshots/ and train.log aside", prefix=_prefix(route))
    assert (run_dir / "train.log").read_bytes() == log


def test_a_transfer_whose_base_changed_since_its_transplant_is_transplanted_again(runs, data):
    transfer = _gen(runs / "transfer0A0B_1_2", data, "AnB", "--n", "2", "--split", "0")
    _ok("transplant", transfer)
    base = Run.load(runs / "half0A")
    shutil.copy(base.snapshot(10), base.final_model)  # the base retrained: other weights, same place
    proc = _ok("train", transfer, "--quiet")
    assert (f"transfer0A0B_1_2: init.caffemodel was made from {base.final_model} as it was before: it has "
            "changed since: transplanted again") in proc.stderr, proc.stderr
    record = json.loads((transfer / "transplant.json").read_text())
    assert record["base_sha256"] == hashlib.sha256(base.final_model.read_bytes()).hexdigest()


@pytest.mark.parametrize("route", ["train", "run.sh"])
def test_an_init_replaced_by_hand_is_neither_trained_from_nor_written_over(runs, data, route):
    transfer = _gen(runs / "transfer0A0B_1_2", data, "AnB", "--n", "2", "--split", "0")
    _ok("transplant", transfer)
    init = transfer / "init.caffemodel"
    shutil.copy(Run.load(runs / "half0A").snapshot(10), init)  # the user's own start
    _refused(_train(route, transfer), f"{init} is not the file transplant wrote",
             f"transplant again (caffe-transfer transplant {transfer}), or move it and transplant.json aside",
             prefix=_prefix(route))
    assert init.read_bytes() == Run.load(runs / "half0A").snapshot(10).read_bytes()
    assert not (transfer / "train.log").is_file() or not (transfer / "train.log").read_bytes()  # Caffe never ran
    assert not any((transfer / "snapshots").iterdir())


@pytest.fixture(scope="module")
def part_trained(trained, data, tmp_path_factory) -> Path:
    """A runs folder of the trained base and transfer0A0B_1_2 trained from it to iteration 10, as
    if killed before its snapshot at 20 (the log cut there, the files gone)."""
    runs = tmp_path_factory.mktemp("part") / "runs"
    shutil.copytree(trained, runs / "half0A")
    transfer = _gen(runs / "transfer0A0B_1_2", data, "AnB", "--n", "2", "--split", "0")
    _ok("train", transfer, "--quiet")
    log = transfer / "train.log"
    text = log.read_text()
    log.write_text(text[: text.index("Snapshotting to binary proto file snapshots/transfer0A0B_1_2_iter_20")])
    for suffix in (".caffemodel", ".solverstate"):
        (transfer / "snapshots" / f"transfer0A0B_1_2_iter_20{suffix}").unlink()
    return runs


@pytest.mark.parametrize("route", ["train", "run.sh"])
def test_a_transfer_part_trained_from_a_base_that_changed_since_is_not_resumed(part_trained, tmp_path, route):
    shutil.copytree(part_trained, tmp_path / "runs")
    transfer = Run.load(tmp_path / "runs" / "transfer0A0B_1_2")
    assert transfer.state() == (State.STOPPED, "resumes from iteration 10")
    base = Run.load(tmp_path / "runs" / "half0A").final_model
    old = base.read_bytes()
    shutil.copy(base.with_name("half0A_iter_10.caffemodel"), base)  # the base retrained: other weights, same place
    before = {k: v for k, v in _digests(transfer.dir).items() if k != ".lock"}
    line = _refused(_train(route, transfer.dir), "its snapshots were trained from",
                    "half0A/snapshots/half0A_iter_20.caffemodel as it was before, and it has changed since: move "
                    "snapshots/ and train.log aside to train afresh from it, or put the old base back",
                    prefix=_prefix(route))
    assert {k: v for k, v in _digests(transfer.dir).items() if k != ".lock"} == before
    if route == "train":
        assert transfer.state() == (State.FAILED, line.removeprefix("Error: "))

    base.write_bytes(old)  # as the line says: the old base back, and it goes on
    proc = _train(route, transfer.dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert transfer.state() == (State.DONE, "")


def test_a_transfer_whose_base_is_not_finished_now_does_not_train_from_its_old_init(runs, data):
    transfer = _gen(runs / "transfer0A0B_1_2", data, "AnB", "--n", "2", "--split", "0")
    _ok("transplant", transfer)
    base = runs / "half0A"
    for name in ("snapshots", "train.log"):  # moved aside to train the base afresh
        shutil.move(base / name, runs / f"{name}.aside")
    assert Run.load(transfer).state() == (State.WAITING, "for half0A")
    _refused(_cli("train", transfer, "--quiet"), "needs the final snapshot of its base half0A",
             f"caffe-transfer train {base}")
    assert not (transfer / "train.log").exists()


# --- snapshots that cannot be read, folders Caffe writes into ------------------------------------
@pytest.mark.parametrize("cut", ["caffemodel", "caffemodel-empty", "solverstate"])
@pytest.mark.parametrize("route", ["train", "run.sh"])
def test_a_cut_newest_snapshot_is_passed_over_for_the_one_before_it(runs, route, cut):
    run = Run.load(runs / "half0A")
    final = run.final_model if cut.startswith("caffemodel") else run.snapshot(run.max_iter, ".solverstate")
    final.write_bytes(b"" if cut.endswith("empty") else final.read_bytes()[: final.stat().st_size // 2])
    assert run.resume_state().iteration == 10 and run.state() == (State.STOPPED, "resumes from iteration 10")
    proc = _train(route, run.dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "half0A_iter_20.solverstate or its .caffemodel is cut short or unreadable: passed over" in proc.stderr
    last = [line for line in run.log.read_text().splitlines() if line.startswith("==> ")][-1]
    assert "resuming from half0A_iter_10.solverstate" in last and "passed over" in last, last
    assert run.state() == (State.DONE, "") and read_caffemodel(run.final_model)


def test_train_makes_the_snapshot_folder_caffe_writes_into(data, tmp_path):
    run_dir = _gen(tmp_path / "half0B", data, "half0B")
    (run_dir / "snapshots").rmdir()  # moved aside, as a message advised
    _ok("train", run_dir, "--quiet")
    assert Run.load(run_dir).state() == (State.DONE, "")


# --- one runner per plan; logs of another run ---------------------------------------------------
def test_a_second_run_all_on_one_plan_is_refused_naming_the_holder(tmp_path):
    from caffe_transfer.runs.lock import Lock

    from .conftest import natman_plan

    plan = natman_plan(tmp_path, caffe_env.caffe_pb2(), *SHORT)
    with Lock(plan, "caffe-transfer run-all"):
        proc = _cli("run-all", plan, "--quiet")
    _refused(proc, f"{plan} is in use by caffe-transfer run-all (pid {os.getpid()}", "wait for it to end")
    assert not any((plan / r).joinpath("train.log").exists() for r in ("halfnatmanA", "halfnatmanB"))


def test_report_leaves_out_a_log_whose_header_names_another_run(trained, data, tmp_path):
    from caffe_transfer.results.report import collect, incomplete_runs

    results = tmp_path / "results"
    shutil.copytree(trained, results / "half0A")
    _gen(results / "half0B", data, "half0B")
    shutil.copy(trained / "train.log", results / "half0B" / "train.log")
    runs = {r.folder: r for r in collect(results, workers=1)[0]}
    assert runs["half0A"].score is not None and runs["half0B"].score is None
    problems = {r["name"]: r["problems"] for r in incomplete_runs(list(runs.values()))}
    assert "train.log: unreadable: a log of half0A, not of half0B" in problems["half0B"]


# --- bundles -------------------------------------------------------------------------------------
def test_install_from_a_bundle_refuses_files_its_sums_do_not_list(tmp_path):
    from .conftest import REPO

    bundle = tmp_path / "bundle"
    for folder in ("source", "debs", "wheels"):
        (bundle / folder).mkdir(parents=True)
    (bundle / "source" / "listed.txt").write_text("listed\n")
    subprocess.run("sha256sum source/listed.txt > SHA256SUMS", shell=True, cwd=bundle, check=True)
    (bundle / "debs" / "extra.deb").write_bytes(b"!<arch>\n")
    (bundle / "wheels" / "extra-1.0-py3-none-any.whl").write_bytes(b"PK")
    proc = subprocess.run(["bash", "tools/install_caffe.sh", "--from", str(bundle)], cwd=REPO, capture_output=True,
                          text=True, env={**ENV, "PYTHON": sys.executable, "CAFFE_ROOT": str(tmp_path / "c"),
                                          "CAFFE_CUDA": "0"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"[install_caffe] error: --from {bundle}: debs/extra.deb, wheels/extra-1.0-py3-none-any.whl not listed in "
        "its SHA256SUMS: remove it, or write the bundle again")
    assert not (tmp_path / "c" / "deps").exists()



# --- prepare checks every output first ------------------------------------------------------------
def test_prepare_refuses_a_foreign_lmdb_before_it_writes_a_list(tmp_path):
    from caffe_transfer.common.errors import CaffeTransferError
    from caffe_transfer.data.prepare import prepare

    from .test_imagenet_lists import imagenet_tree

    imagenet_tree(tmp_path, 12, 2, 30)
    data_root = tmp_path / "data"
    (data_root / "lists").mkdir(parents=True)
    (data_root / "lists" / "whole_train.txt").write_text("my own list\n")
    (data_root / "half0A_train" / "lmdb").mkdir(parents=True)
    (data_root / "half0A_train" / "lmdb" / "data.mdb").write_bytes(b"convert_imageset's")
    before = _digests(data_root)
    with pytest.raises(CaffeTransferError, match=r"half0A_train/lmdb was not written by make-lmdb"):
        prepare(tmp_path / "train", tmp_path / "train", data_root, ["half0A_train"], progress=False, num_classes=12)
    assert _digests(data_root) == before and sorted(p.name for p in data_root.iterdir()) == ["half0A_train", "lists"]


# --- builds record what they depend on, and are complete only when whole ------------------------
def test_a_build_under_the_wrong_image_root_is_not_complete_and_the_next_run_retries(tmp_path):
    from .test_data import _jpegs

    list_file = _jpegs(tmp_path / "img", 60, (16, 12))
    wrong = tmp_path / "wrong"
    for i in range(12):  # a fifth of the images are found there
        (wrong / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "img" / f"c{i % 3}" / f"{i}.jpg", wrong / f"c{i % 3}")
    out = tmp_path / "out"
    _refused(_cli("make-lmdb", list_file, wrong, out, "--resize", "16"),
             f"48 of the 60 images of {list_file} could not be read, more than 1%",
             f"nothing was marked complete (see {out / 'skipped.txt'})", above=True)
    assert not (out / "COMPLETE").exists() and not (out / "lmdb").exists()
    done = _ok("make-lmdb", list_file, tmp_path / "img", out, "--resize", "16")
    assert "wrote 60 images" in done.stdout and json.loads((out / "COMPLETE").read_text())["written"] == 60
    assert json.loads((out / "COMPLETE").read_text())["image_root"] == str(tmp_path / "img")
    shutil.copytree(tmp_path / "img", tmp_path / "other")
    _refused(_cli("make-lmdb", list_file, tmp_path / "other", out, "--resize", "16"),
             f"was built with other settings (image root {tmp_path / 'img'}, not {tmp_path / 'other'})")


def test_a_build_that_lost_a_whole_class_is_not_complete(tmp_path):
    from .test_data import _jpegs

    list_file = _jpegs(tmp_path / "img", 60, (16, 12))
    for image in (tmp_path / "img" / "c2").iterdir():
        image.write_bytes(b"not a JPEG")  # 20 of 60: also over the share, so keep only class 2's 4 first
    lines = [line for line in list_file.read_text().splitlines() if not line.startswith("c2/") or
             int(line.split("/")[1].split(".")[0]) < 12]
    list_file.write_text("\n".join(lines) + "\n")
    _refused(_cli("make-lmdb", list_file, tmp_path / "img", tmp_path / "out", "--resize", "16"),
             f"class 2 of {list_file} lost every one of its images (1 such classes)", "nothing was marked complete",
             above=True)
    assert not (tmp_path / "out" / "COMPLETE").exists()


def test_lists_refuses_a_class_folder_without_images_and_says_what_it_ignored(tmp_path):
    from .test_data import _jpegs

    _jpegs(tmp_path / "img", 9, (16, 12))
    (tmp_path / "img" / "list.txt").unlink()
    (tmp_path / "img" / "aaa_empty").mkdir()
    _refused(_cli("lists", "--train-dir", tmp_path / "img", "--out", tmp_path / "o"),
             f"{tmp_path / 'img'}: 1 class folders hold no image (aaa_empty)")
    assert not (tmp_path / "o").exists()

    (tmp_path / "img" / "aaa_empty").rmdir()
    (tmp_path / "img" / "lost+found").mkdir()
    (tmp_path / "img" / "README").write_text("notes\n")
    (tmp_path / "img" / "loop").symlink_to(tmp_path / "img" / "loop")
    proc = _ok("lists", "--train-dir", tmp_path / "img", "--out", tmp_path / "o")
    assert (f"{tmp_path / 'img'}: ignored 3 entries that are not class folders: README, loop, lost+found"
            in proc.stdout), proc.stdout
    labels = {line.split()[0].split("/")[0]: line.split()[1] for line in
              (tmp_path / "o" / "whole_train.txt").read_text().splitlines()}
    assert labels == {"c0": "0", "c1": "1", "c2": "2"}


def test_prepare_refuses_a_list_of_the_users_before_it_writes_any(tmp_path):
    from caffe_transfer.common.errors import CaffeTransferError
    from caffe_transfer.data.prepare import prepare

    from .test_imagenet_lists import imagenet_tree

    imagenet_tree(tmp_path, 12, 2, 30)
    data_root = tmp_path / "data"
    with pytest.raises(CaffeTransferError, match=rf"{data_root}/lists/whole_train.txt: its paths are ImageNet's"):
        prepare(tmp_path / "train", tmp_path / "train", data_root, ["half0A_train"], progress=False)
    assert not data_root.exists()  # made for the lists, and removed with them
    (data_root / "half0A_train").mkdir(parents=True)
    (data_root / "half0A_train" / "files.txt").write_text("my own list\n")
    with pytest.raises(CaffeTransferError, match=r"half0A_train/files.txt is not the list prepare writes"):
        prepare(tmp_path / "train", tmp_path / "train", data_root, ["half0A_train"], progress=False, num_classes=12)
    assert [str(p.relative_to(data_root)) for p in sorted(data_root.rglob("*"))] == ["half0A_train",
                                                                                     "half0A_train/files.txt"]
    assert (data_root / "half0A_train" / "files.txt").read_text() == "my own list\n"
