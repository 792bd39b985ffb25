"""The GPU path checked on a CPU machine: an offline bundle under 60 MiB builds Caffe with the
network cut, and the one-shot GPU check runs every step that needs no GPU (--dry-run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert proc.stderr.strip().splitlines()[-1] == f"[install_caffe] error: --from {broken}: files do not match its SHA256SUMS"
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


def test_gpu_check_needs_its_folders():
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--out", "/tmp/x"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "[gpu_check] error: expected --bundle DIR --out DIR [--dry-run]"


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_that_needs_no_gpu(bundle, tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--bundle", str(bundle), "--out", str(out), "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] and report["arch"] == "small"
    assert [t["engine"] for t in report["time"]] == ["caffe"]
    assert report["time"][0]["iteration_ms"] > 0 and {"conv1", "fc8"} <= set(report["time"][0]["layers"])
    train = report["train"]
    assert train["init"] == "transplant"
    assert train["frozen_identical"] == {"conv1": True, "conv2": True, "conv3": True}
    assert train["loss_falls"] and train["datalayer_ms"] > 0 and train["memory_ms"] > 0
    assert report["agree"] == "skipped: needs a GPU" and report["torch"] == "skipped: needs a GPU"
    one, eight = report["grid"]["1_gpus"], report["grid"]["8_gpus"]
    assert one["iter_seconds"] == pytest.approx(train["datalayer_ms"] / 1000)
    assert eight["gpu_hours"] == pytest.approx(one["gpu_hours"]) and eight["wall_hours"] < one["wall_hours"]
    assert "gpu_check (dry run, CPU, small net)" in proc.stdout
