"""The GPU path checked on a CPU machine: an offline bundle under 60 MiB builds Caffe with the
network cut, and the one-shot GPU check runs every step that needs no GPU (--dry-run)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffe_transfer.common import caffe_env, protos

from .conftest import REPO

LIMIT = 60 * 2**20


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """`install_caffe.sh --bundle` for this Python (it downloads: the registries are reachable here)."""
    if os.geteuid() != 0:
        pytest.skip("writing a bundle downloads .debs with apt: run as root")
    out = tmp_path_factory.mktemp("bundle")
    proc = subprocess.run(["bash", "tools/install_caffe.sh", "--bundle", str(out)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable, "CAFFE_ROOT": str(out / "unused")})
    assert proc.returncode == 0, proc.stderr
    return out


def test_bundle_is_under_60_mib_and_holds_source_debs_and_wheels(bundle):
    files = [p for p in bundle.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < LIMIT
    assert {p.parent.name for p in files} >= {"source", "debs", "wheels"}
    debs = {p.name.split("_")[0] for p in (bundle / "debs").glob("*.deb")}
    assert {"libprotobuf-dev", "protobuf-compiler", "libgoogle-glog-dev", "libhdf5-dev", "liblmdb-dev",
            "libopenblas-dev", "libboost-python1.74-dev"} <= debs
    assert not {"libc6", "gcc", "cmake", "libopencv-dev"} & debs  # the machine's, or left out


def test_from_refuses_a_bundle_that_does_not_match_its_sums(bundle, tmp_path):
    broken = tmp_path / "bundle"
    shutil.copytree(bundle, broken, ignore=shutil.ignore_patterns("*.deb"))
    (broken / "debs" / "x.deb").write_bytes(b"not the bundled file")
    proc = subprocess.run(["bash", "tools/install_caffe.sh", "--from", str(broken)], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable, "CAFFE_ROOT": str(tmp_path / "c")})
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"[install_caffe] error: --from {broken}: files do not match its SHA256SUMS (debs/"), line
    assert all(f"debs/{deb.name}" in line for deb in (bundle / "debs").glob("*.deb")), line  # each one named
    assert not (tmp_path / "c" / "bin").exists()


@pytest.mark.slow
def test_from_bundle_builds_caffe_with_the_network_cut(bundle, tmp_path):
    """The whole CPU build from the bundle inside a new network namespace (no interface but a down
    loopback): every C++ dependency comes from the unpacked .debs, not the system."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not allowed here")
    root = tmp_path / "caffe"
    env = {**os.environ, "PYTHON": sys.executable, "CAFFE_ROOT": str(root), "CAFFE_CUDA": "0"}
    proc = subprocess.run(["unshare", "-n", "bash", "tools/install_caffe.sh", "--from", str(bundle)], cwd=REPO,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / ".caffe-transfer-build").read_text().strip().endswith("deps=bundle")
    ldd = subprocess.run(["ldd", str(root / "bin" / "caffe")], capture_output=True, text=True).stdout
    for lib in ("libglog", "libprotobuf", "libboost_thread", "libhdf5_serial", "libopenblas", "liblmdb"):
        line = next(line for line in ldd.splitlines() if lib in line)
        assert str(root / "deps") in line, line
    doctor = subprocess.run([str(Path(sys.executable).parent / "caffe-transfer"), "doctor"], capture_output=True,
                            text=True, env=env)
    assert doctor.returncode == 0, doctor.stdout
    assert "pycaffe" in doctor.stdout and "deps=bundle" in doctor.stdout


def load_tool(name: str):
    """A script of tools/ as a module (no package: the GPU check's two scripts import each other
    from their folder)."""
    if str(REPO / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "tools"))
    return importlib.import_module(name)


@pytest.mark.parametrize("args, line", [
    (["--out", "/tmp/x"], "no --bundle (or --installed)"),
    (["--installed", "--bundle", "b", "--out", "/tmp/x"], "--installed builds nothing: it takes no --bundle"),
    (["--installed", "--dry-run", "--out", "/tmp/x"], "--installed measures a GPU: it takes no --dry-run"),
    (["--installed"], "no --out"),
    (["--bundle"], "--bundle needs a folder"),
    (["--bundle", "--out", "/tmp/x"], "--bundle needs a folder"),
    (["--bundle", "b", "--out"], "--out needs a folder"),
    (["--bundle", "b", "--out", "/tmp/x", "--gpus"], "unknown argument --gpus"),
])
def test_gpu_check_usage_errors_are_one_line_and_exit_2(args, line):
    proc = subprocess.run(["bash", "tools/gpu_check.sh", *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"[gpu_check] error: {line}: expected --bundle DIR --out DIR [--dry-run], or --installed --out DIR\n"


def cuda_stamp(root: Path, mode: str) -> Path:
    """A CAFFE_ROOT whose build stamp records a CUDA build (in install_caffe.sh's MODE format)."""
    root.mkdir()
    stamp = (REPO / "tools" / "install_caffe.sh").read_text()
    assert 'MODE=$([ "$CUDA" = 1 ] && echo "cuda:${CUDA_ARCH_BIN// /,}$PTX${CUDNN_VERSION:++cudnn$CUDNN_VERSION}"' in stamp
    (root / ".caffe-transfer-build").write_text(f"source=x mode={mode} fixes=datalayer-threads\n")
    return root


@pytest.mark.parametrize("native, ptx, card, runs", [
    (("80", "90"), ("90",), "8.0", True), (("80", "90"), ("90",), "8.6", True),  # sm_80 code on an A10 / RTX 30
    (("80", "90"), ("90",), "7.5", False), (("80", "90"), ("90",), "12.0", True),  # PTX compiled on Blackwell
    (("80", "90"), (), "10.0", False), (("86",), (), "8.0", False), (("90a",), (), "9.0", True),
    (("90a",), (), "9.1", False),
])
def test_which_cards_a_build_runs_on(native, ptx, card, runs):
    assert caffe_env.Kernels(native, ptx).serves(card) is runs


def test_the_stamp_says_what_gpu_code_the_build_carries(tmp_path, monkeypatch, one_gpu):
    monkeypatch.setenv("CAFFE_ROOT", str(cuda_stamp(tmp_path / "caffe", "cuda:80,90,ptx90+cudnn9.13.0")))
    assert caffe_env.kernels() == caffe_env.Kernels(("80", "90"), ("90",))
    one_gpu.write_text("7.5\n")
    assert caffe_env.unserved_gpus() == ["7.5"]
    kernels = next(c for c in caffe_env.doctor() if c.what == "kernels")
    assert not kernels.ok and 'CUDA_ARCH_BIN="75"' in kernels.fix, kernels
    one_gpu.write_text("9.0\n")
    assert caffe_env.unserved_gpus() == []
    monkeypatch.setenv("CAFFE_ROOT", str(cuda_stamp(tmp_path / "old", "cuda:90+cudnn9.13.0")))  # before PTX
    assert caffe_env.kernels() == caffe_env.Kernels(("90",), ())


def test_gpu_check_installed_refuses_a_build_that_cannot_run_on_the_card(tmp_path, monkeypatch, one_gpu):
    """The image's `gpu-check`: a CPU-only Caffe, or one with no code for the card, is refused on
    one line before anything is measured."""
    one_gpu.write_text("7.5\n")
    env = {**os.environ, "PYTHON": sys.executable}
    out = tmp_path / "out"
    cpu = subprocess.run(["bash", "tools/gpu_check.sh", "--installed", "--out", str(out)], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert cpu.returncode == 1 and cpu.stderr.count("\n") == 1 and "is a CPU-only build" in cpu.stderr, cpu.stderr
    env["CAFFE_ROOT"] = str(cuda_stamp(tmp_path / "caffe", "cuda:80,90,ptx90+cudnn9.13.0"))
    cuda = subprocess.run(["bash", "tools/gpu_check.sh", "--installed", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert cuda.returncode == 1 and cuda.stderr.count("\n") == 1, cuda.stderr
    assert ("has no code for compute capability 7.5 (native sm_80, sm_90; PTX compute_90): rebuild with "
            'CUDA_ARCH_BIN="75"') in cuda.stderr
    assert list(out.iterdir()) == []


def test_the_checks_venv_sees_the_packages_of_a_python3_that_is_itself_a_venv(tmp_path):
    """As on the GPU images, where python3 is /opt/torch/.venv's: a venv made from it with
    --system-site-packages would see only the base interpreter's packages. The outer venv here
    holds a module the base lacks (numpy cannot show it: this base has numpy too)."""
    outer = tmp_path / "outer"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(outer)], check=True)
    site = Path(subprocess.run([str(outer / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "only_in_the_outer_venv.py").write_text("")
    env = {**os.environ, "PATH": f"{outer / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHON", None)
    check = tmp_path / "check" / "venv"
    subprocess.run(["bash", "tools/gpu_check_venv.sh", str(check)], cwd=REPO, env=env, check=True)
    found = subprocess.run([str(check / "bin" / "python"), "-c",
                            "import only_in_the_outer_venv as m, sys; print(m.__file__); print(sys.prefix)"],
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    module, prefix = found.stdout.split()
    assert Path(module).parent == site and Path(prefix) == check  # seen through, installed into its own


def test_from_memory_is_constant_dummy_data_that_caffe_fills_once(tmp_path, caffe):
    """The check's compute limit: its memory-fed net draws nothing per iteration. A value written
    into the data blob survives the next forward with the check's constant fillers; with a
    gaussian filler (the old check's) Caffe draws the batch again on the CPU every forward."""
    check = load_tool("gpu_check")
    run = check.write_run(tmp_path / "half0A", "half0A", check.DRY, tmp_path / "data", False, 1)
    caffe.set_mode_cpu()

    def survives(prototxt: Path) -> bool:
        net = caffe.Net(str(prototxt), caffe.TRAIN)  # the TRAIN net: DummyData, no LMDB
        net.forward()
        net.blobs["data"].data[...] = 7
        net.forward()
        return bool(np.all(net.blobs["data"].data == 7))

    check.fed_from_memory(run, "memory")
    fillers = [f.type for layer in protos.read_net(run / "memory.prototxt").layer if layer.type == "DummyData"
               for f in layer.dummy_data_param.data_filler]
    assert fillers == ["constant", "constant"]
    assert survives(run / "memory.prototxt")
    check.fed_from_memory(run, "drawn", constant=False)
    assert not survives(run / "drawn.prototxt")


def _rates(base_ms: float, frozen_ms: float) -> list[dict]:
    return [{"net": "half0A", "kind": "base", "n": None, "datalayer_ms": base_ms, "memory_ms": 50.0, "gpu_mib": 3000},
            {"net": "transfer0A0B_1_1", "kind": "frozen", "n": 1, "datalayer_ms": frozen_ms, "memory_ms": 40.0,
             "gpu_mib": 3000},
            {"net": "transfer0A0B_1_5", "kind": "frozen", "n": 5, "datalayer_ms": frozen_ms, "memory_ms": 20.0,
             "gpu_mib": 2000},
            {"net": "transfer-ft0A0B_1_3", "kind": "finetuned", "n": 3, "datalayer_ms": base_ms, "memory_ms": 50.0,
             "gpu_mib": 3000}]


def _packing(base: tuple, frozen: tuple) -> list[dict]:
    return [{"kind": kind, "nets": k, "aggregate_ms": ms} for kind, row in (("base", base), ("frozen", frozen))
            for k, ms in zip((1, 2, 4), row)]


def test_nets_per_gpu_is_the_fewest_within_15_percent_of_the_compute_limit_else_the_best():
    check = load_tool("gpu_check_report")
    rates = _rates(85.0, 88.0)
    assert check.recommend(rates, _packing((85, 56, 52), (88, 47, 41)), None)[0] == 4  # 2: frozen 47 > 1.15 * 40
    assert check.recommend(rates, _packing((85, 56, 52), (88, 44, 41)), None)[0] == 2
    assert check.recommend(rates, _packing((85, 70, 72), (88, 60, 66)), None)[0] == 2  # none within: the lowest
    assert check.recommend(rates, _packing((85, 56, 52), (88, 47, 41)), 3000 * 3)[0] == 2  # 4 nets do not fit


@pytest.fixture(scope="module")
def dry_run(bundle, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The GPU check's --dry-run, once for the tests that read what it wrote."""
    out = tmp_path_factory.mktemp("check")
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--bundle", str(bundle), "--out", str(out), "--dry-run"],
                          cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_that_needs_no_gpu(dry_run):
    out, proc = dry_run
    rates = json.loads((out / "gpu_check.json").read_text())
    assert rates["schema"] == "caffe-transfer/gpu-check/1" and rates["architecture"] == "small"
    assert [(r["kind"], r["n"]) for r in rates["rates"]] == [("base", None), ("frozen", 1), ("frozen", 5),
                                                             ("finetuned", 3)]
    assert all(r["datalayer_ms"] > 0 and r["memory_ms"] > 0 and r["gpu_mib"] > 0 for r in rates["rates"])
    assert "0" in rates["datalayer_alone_ms"] and str(rates["data_threads"]) in rates["datalayer_alone_ms"]
    assert [(p["kind"], p["nets"]) for p in rates["packing"]] == [(k, n) for k in ("base", "frozen") for n in (1, 2, 4)]
    assert rates["packing"][0]["aggregate_ms"] == rates["rates"][0]["datalayer_ms"]
    assert rates["recommended_nets_per_gpu"] in (1, 2, 4)
    report = json.loads((out / "report.json").read_text())
    assert report["dry_run"] and [t["engine"] for t in report["time"]] == ["caffe"]
    assert report["time"][0]["iteration_ms"] > 0 and {"conv1", "fc8"} <= set(report["time"][0]["layers"])
    by_net = {r["net"]: r for r in report["rates"]}
    assert {r["init"] for name, r in by_net.items() if name != "half0A"} == {"transplant"}
    # seeded as on a GPU node without pycaffe, through the caffe tool; its copied layers stay put
    assert by_net["transfer0A0B_1_5"]["filled_by"] == "caffe"
    assert by_net["transfer0A0B_1_5"]["frozen_identical"] == {f"conv{i}": True for i in range(1, 6)}
    assert all(r["loss_falls"] for r in report["rates"])
    assert report["price"]["one_net"]["gpu_hours"] > 0 and report["price"]["one_net"]["gpus"] == 8
    assert report["agree"] == "skipped: needs a GPU" and report["torch"] == "skipped: needs a GPU"
    # #25's switches parsed as `gen --cudnn` parses them, and nothing run with them without a GPU
    assert report["cudnn_settings"] == {
        "default": {}, "measure": {"CAFFE_CUDNN_WORKSPACE_MB": "1024", "CAFFE_CUDNN_ALGO": "measure"},
        "deterministic": {"CAFFE_CUDNN_WORKSPACE_MB": "1024", "CAFFE_CUDNN_ALGO": "measure",
                          "CAFFE_CUDNN_DETERMINISTIC": "1"},
        "tf32": {"CAFFE_CUDNN_WORKSPACE_MB": "1024", "CAFFE_CUDNN_ALGO": "measure", "CAFFE_CUDNN_DETERMINISTIC": "1",
                 "CAFFE_TF32": "1"}}
    assert report["curves"] == "skipped: needs a GPU" and [t["setting"] for t in report["time"]] == ["default"]
    assert "cuDNN settings: default (none set); measure CAFFE_CUDNN_WORKSPACE_MB=1024 CAFFE_CUDNN_ALGO=measure" \
        in proc.stdout
    for memory in out.glob("*/memory.prototxt"):
        fillers = [f.type for f in protos.read_net(memory).layer[0].dummy_data_param.data_filler]
        assert fillers == ["constant", "constant"], memory
    assert "gpu_check (dry run, CPU, small net" in proc.stdout and "nets per GPU:" in proc.stdout


@pytest.mark.slow
def test_plan_prices_the_grid_from_the_checks_json_as_the_check_did(dry_run, tmp_path):
    """What the check writes is what `plan --rates` reads: the dry run's small-net rates price a
    small-net plan, to the GPU-hours and wall-clock the check printed for one net per GPU."""
    out, _ = dry_run
    proc = subprocess.run([str(Path(sys.executable).parent / "caffe-transfer"), "plan", "--out", str(tmp_path / "plan"),
                           "--arch", "small", "--rates", str(out / "gpu_check.json"), "--gpus", "8"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    one_net = json.loads((out / "report.json").read_text())["price"]["one_net"]
    assert f"priced by {out / 'gpu_check.json'}" in proc.stdout
    assert (f"1 run(s) per GPU: {one_net['gpu_hours']:,.0f} GPU-hours" in proc.stdout
            and f"on 8 GPU(s) {one_net['wall_hours']:,.0f} h wall-clock" in proc.stdout), proc.stdout
