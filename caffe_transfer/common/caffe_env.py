"""Finding the Caffe that `tools/install_caffe.sh` built: its binaries, pycaffe and `caffe_pb2`.

The install script puts everything under one prefix, `CAFFE_ROOT` (default `/opt/caffe`):
`bin/caffe` and the tools, `lib/libcaffe.so`, and pycaffe in `lib/python3/dist-packages`. This
module finds that prefix (the `CAFFE_ROOT` environment variable wins), imports pycaffe from it,
says which of the two routes to a filled net `transplant` takes (pycaffe, or the `caffe` tool
where pycaffe does not import), and reports what is missing with the command that fixes it
(`caffe-transfer doctor`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from caffe_transfer.common.errors import CaffeTransferError

DEFAULT_ROOT = Path("/opt/caffe")
PYCAFFE_SUBDIR = Path("lib/python3/dist-packages")
TOOLS = ("caffe", "upgrade_net_proto_text", "upgrade_solver_proto_text", "compute_image_mean",
         "convert_imageset")
INSTALL_HINT = "run `sudo tools/install_caffe.sh` (or `tools/setup.sh`) to build Caffe"


def caffe_root() -> Path:
    """Where Caffe is installed: $CAFFE_ROOT, which must then be a folder, else DEFAULT_ROOT."""
    given = os.environ.get("CAFFE_ROOT")
    if given and not Path(given).is_dir():
        raise CaffeTransferError(f"CAFFE_ROOT={given}: no such folder: expected the prefix tools/install_caffe.sh "
                                 f"installed Caffe into (unset, {DEFAULT_ROOT})")
    return Path(given or DEFAULT_ROOT)


def tool(name: str) -> Path:
    """Path of a Caffe binary (`caffe`, `upgrade_net_proto_text`, ...)."""
    path = caffe_root() / "bin" / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    found = shutil.which(name)
    if found:
        return Path(found)
    raise CaffeTransferError(f"Caffe tool {name!r} not found in {caffe_root() / 'bin'} or on PATH: {INSTALL_HINT}")


def _import(module: str):
    """Import a module of the pycaffe under CAFFE_ROOT."""
    # glog reads its threshold when libcaffe loads: set it before the first import, so that
    # loading nets does not print every layer (GLOG_minloglevel=0 brings the log back).
    os.environ.setdefault("GLOG_minloglevel", "2")
    path = str(caffe_root() / PYCAFFE_SUBDIR)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CaffeTransferError(f"cannot import {module} ({e}): {INSTALL_HINT}") from None


PB2 = "caffe.proto.caffe_pb2"


def caffe_pb2():
    """Caffe's own protobuf module (`caffe.proto.caffe_pb2`).

    Loaded from its file without the `caffe` package's __init__, which loads libcaffe and
    scikit-image (0.4 s) for a module that needs only protobuf. It is registered under its own
    name, so a later `import caffe` finds it and uses the same message classes."""
    if PB2 not in sys.modules:
        path = caffe_root() / PYCAFFE_SUBDIR / "caffe" / "proto" / "caffe_pb2.py"
        if not path.is_file():
            return _import(PB2)  # a pycaffe elsewhere on sys.path, or the install hint
        spec = importlib.util.spec_from_file_location(PB2, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[PB2] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PB2]
            raise
    return sys.modules[PB2]


def pycaffe():
    """The `caffe` Python module (CPU mode unless the caller switches it)."""
    caffe = _import("caffe")
    if not hasattr(caffe, "Net"):  # caffe_pb2 alone: a bundle build for a Python it had no Boost.Python for
        raise CaffeTransferError(f"{caffe_root() / PYCAFFE_SUBDIR / 'caffe'} holds caffe_pb2 but no pycaffe: "
                                 f"{INSTALL_HINT} for this Python (PYTHON=...)")
    proto = sys.modules.get("caffe.proto")
    if proto is not None and not hasattr(proto, "caffe_pb2"):
        proto.caffe_pb2 = sys.modules[PB2]  # loaded before the package by caffe_pb2()
    return caffe


FILL = "CAFFE_TRANSFER_FILL"
FILL_ROUTES = ("pycaffe", "caffe")


def fill_route() -> tuple[str, str]:
    """How `transplant` fills a net and saves it, and why: ("pycaffe", ...) where pycaffe imports,
    else ("caffe", ...): the `caffe` tool and caffe_pb2, which write the same file bit for bit.
    CAFFE_TRANSFER_FILL=caffe or =pycaffe forces one (tests compare both; a user may rule one out)."""
    forced = os.environ.get(FILL, "")
    if forced and forced not in FILL_ROUTES:
        raise CaffeTransferError(f"{FILL}={forced!r}: expected pycaffe or caffe (or unset: pycaffe where it imports)")
    if forced == "caffe":
        return "caffe", f"the caffe tool and caffe_pb2 ({FILL}=caffe)"
    try:
        pycaffe()
    except CaffeTransferError as e:
        if forced:
            raise CaffeTransferError(f"{FILL}=pycaffe, but {e}") from None
        return "caffe", "the caffe tool and caffe_pb2 (pycaffe does not import)"
    return "pycaffe", f"pycaffe net surgery ({FILL}=pycaffe)" if forced else "pycaffe net surgery"


def run_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    """Run a Caffe tool to completion; its failure becomes a CaffeTransferError with its last line."""
    proc = subprocess.run([str(tool(name)), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise CaffeTransferError(f"{name} failed (exit {proc.returncode}): {last}")
    return proc


@dataclass
class Check:
    what: str
    ok: bool
    detail: str
    fix: str = ""


def build_stamp() -> str | None:
    """What the install script recorded about the build (source, mode, Python), if it ran."""
    stamp = caffe_root() / ".caffe-transfer-build"
    return stamp.read_text().strip() if stamp.is_file() else None


def cuda_build() -> bool:
    return "mode=cuda" in (build_stamp() or "")


def cudnn_version() -> str | None:
    """The cuDNN version the build was compiled with (the stamp's `mode=cuda:ARCHS+cudnnX.Y.Z`)."""
    found = re.search(r"\bmode=cuda:\S*\+cudnn([0-9.]+)", build_stamp() or "")
    return found.group(1) if found else None


@dataclass(frozen=True)
class Kernels:
    """The GPU code a CUDA build carries: native code per architecture ("80", "90a") and PTX."""

    native: tuple[str, ...]
    ptx: tuple[str, ...]

    def serves(self, capability: str) -> bool:
        """Whether a card of compute capability "8.6" runs this build. Native code runs on its own
        major version at its minor or above (sm_80 on an 8.6 card), except the "a" variants, which
        run on their own card only; PTX runs on any card at or above it, compiled when Caffe loads."""
        major, minor = (int(x) for x in capability.split("."))
        card = major * 10 + minor

        def native_runs(arch: str) -> bool:
            if arch.endswith("a"):
                return int(arch[:-1]) == card
            arch_major, arch_minor = divmod(int(arch), 10)
            return arch_major == major and arch_minor <= minor

        return any(map(native_runs, self.native)) or any(int(p) <= card for p in self.ptx)

    def __str__(self) -> str:
        text = "native " + ", ".join(f"sm_{a}" for a in self.native)
        return text + ("; PTX " + ", ".join(f"compute_{p}" for p in self.ptx) if self.ptx else "")


def kernels() -> Kernels | None:
    """What GPU code the build carries (the stamp's `mode=cuda:80,90,ptx90+cudnn...`); None for a
    CPU build."""
    found = re.search(r"\bmode=cuda:([^+\s]+)", build_stamp() or "")
    if not found:
        return None
    parts = found.group(1).split(",")
    return Kernels(tuple(p for p in parts if not p.startswith("ptx")),
                   tuple(p[3:] for p in parts if p.startswith("ptx")))


def gpu_capabilities() -> list[str]:
    """The compute capability ("9.0") of each GPU the driver reports; none where nvidia-smi is
    missing or sees none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    proc = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in proc.stdout.splitlines() if re.fullmatch(r"\d+\.\d+", line.strip())] \
        if proc.returncode == 0 else []


def arch_bin(capabilities: list[str]) -> str:
    """The CUDA_ARCH_BIN setting that builds code for these compute capabilities ("7.5" -> 75)."""
    return f"CUDA_ARCH_BIN=\"{' '.join(c.replace('.', '') for c in capabilities)}\""


def unserved_gpus() -> list[str]:
    """The visible GPUs' compute capabilities that a CUDA build has no code for (a rebuild with
    CUDA_ARCH_BIN set to them fixes it); none for a CPU build."""
    carried = kernels()
    return sorted({c for c in gpu_capabilities() if carried and not carried.serves(c)})


DATA_THREADS_ENV = "CAFFE_DATA_THREADS"  # what the scheduler and SLURM tasks set for a GPU run
DATA_THREADS_MAX = 64  # the patched DataLayer's own limit
DATA_THREADS_AUTO = 4  # its automatic count at most


def data_threads() -> int:
    """The DataLayer's transform threads for a TRAIN net, as the patched Caffe reads them from
    CAFFE_DATA_THREADS (tools/caffe_fixes/parallel_data_layer.patch): 0 is stock Caffe's loop; unset
    is automatic, the CPUs this process may use, at most 4. A bad value is refused here, on one line,
    rather than by a Caffe that stops on it hours later in a queue."""
    text = os.environ.get("CAFFE_DATA_THREADS")  # DATA_THREADS_ENV, spelled out where it is read
    if text is None:
        return max(1, min(DATA_THREADS_AUTO, len(os.sched_getaffinity(0))))
    if not (text.isascii() and text.isdigit() and int(text) <= DATA_THREADS_MAX):
        raise CaffeTransferError(f"CAFFE_DATA_THREADS={text}: expected a whole number from 0 (stock loop) to "
                                 f"{DATA_THREADS_MAX}, or unset for automatic")
    return int(text)


def datalayer_patched() -> bool:
    """Whether the build carries the DataLayer patch (install_caffe.sh records its fixes in the stamp)."""
    return "datalayer-threads" in (build_stamp() or "")


def gpu_count() -> int:
    """GPUs the driver reports; 0 where nvidia-smi is missing or sees none."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    proc = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU ")) if proc.returncode == 0 else 0


def doctor() -> list[Check]:
    """What a working setup needs, each with what was found and, where missing, the fix."""
    root = caffe_root()
    checks = [Check("CAFFE_ROOT", root.is_dir(), str(root),
                    "" if root.is_dir() else INSTALL_HINT)]
    stamp = build_stamp()
    checks.append(Check("build", stamp is not None, stamp or "no build stamp", "" if stamp else INSTALL_HINT))
    for name in TOOLS:
        try:
            path = tool(name)
            checks.append(Check(name, True, str(path)))
        except CaffeTransferError:
            checks.append(Check(name, False, "not found", INSTALL_HINT))
    try:
        version = run_tool("caffe", "--version").stdout.strip() or "unknown"
        checks.append(Check("caffe --version", True, version))
    except CaffeTransferError as e:
        checks.append(Check("caffe --version", False, str(e), INSTALL_HINT))
    try:
        caffe = pycaffe()
        checks.append(Check("pycaffe", True, f"caffe {caffe.__version__} from {Path(caffe.__file__).parent}"))
    except CaffeTransferError as e:  # optional: transplant takes the caffe tool's route without it
        checks.append(Check("pycaffe", True, f"not importable ({e})", "optional: " + INSTALL_HINT +
                            " for this Python (PYTHON=...)"))
    try:
        checks.append(Check("transplant", True, fill_route()[1]))
    except CaffeTransferError as e:
        checks.append(Check("transplant", False, str(e), f"unset {FILL} to take the route that works here"))
    import google.protobuf
    import numpy

    checks.append(Check("python", True, f"{sys.executable} {sys.version.split()[0]}, numpy {numpy.__version__}, "
                                        f"protobuf {google.protobuf.__version__}"))
    try:
        threads = data_threads()
        detail = f"{threads} transform thread(s) per TRAIN net" + (" (stock loop)" if threads == 0 else "")
        checks.append(Check("DataLayer", datalayer_patched(),
                            f"parallel transform, the same batches as stock Caffe: {detail}" if datalayer_patched()
                            else "stock DataLayer (one thread): this build predates the DataLayer patch",
                            "" if datalayer_patched() else "rebuild: tools/install_caffe.sh"))
    except CaffeTransferError as e:
        checks.append(Check("DataLayer", False, str(e), "unset CAFFE_DATA_THREADS, or set 0 to 64"))
    gpus = gpu_count()
    if cuda_build():  # no GPU is the machine's state, not a gap in the install (a docker build sees none)
        checks.append(Check("mode", True, f"CUDA build, {gpus} GPU(s) visible",
                            "" if gpus else "no GPU visible: check the driver (docker run --gpus all); a CUDA "
                                            "build cannot train without a GPU, even with --cpu (its data "
                                            "threads call CUDA): CAFFE_CUDA=0 builds a CPU-only Caffe"))
        unserved = unserved_gpus()
        checks.append(Check("kernels", not unserved, f"{kernels()}" + (
            f": none for compute capability {', '.join(unserved)}" if unserved else ""),
            f"rebuild for the card: {arch_bin(unserved)} tools/install_caffe.sh "
            "(the image: docker build --build-arg CUDA_ARCH_BIN=...)" if unserved else ""))
        cudnn = cudnn_version()
        checks.append(Check("cuDNN", True, f"cuDNN {cudnn} (layers run it unless gen --engine caffe; "
                            "its switches: gen --cudnn, docs/gpu.md)" if cudnn
                            else "not built in: Caffe's own GPU code (CAFFE_CUDNN=1 tools/install_caffe.sh "
                                 "builds it with cuDNN)"))
    else:
        fix = ("GPUs are visible but Caffe is CPU-only: rebuild with CAFFE_CUDA=1 tools/install_caffe.sh"
               if gpus else "")
        checks.append(Check("mode", True, f"CPU-only build ({gpus} GPU(s) visible)", fix))
    return checks
