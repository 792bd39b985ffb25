"""The GPU acceptance in one run, after tools/gpu_check.sh has built Caffe: measures, checks, and
writes OUT/gpu_check.json (the rates `plan --rates` reads, schema caffe-transfer/gpu-check/1) and
OUT/report.json (everything), with a one-screen summary. tools/gpu_check_report.py judges the
figures (verdicts, nets per GPU, the grid's price, the goals).

  time     `caffe time` of the base net at its training batch, fed from memory, per engine
  rates    each net alone, through Caffe's DataLayer and fed from memory (constant DummyData, the
           GPU's compute limit): a base, frozen transfers at a low and a high n, a fine-tuned
           transfer, seeded by `transplant` from the base (in a dry run one of them by the caffe
           tool, CAFFE_TRANSFER_FILL=caffe: a GPU node's Python often has no pycaffe); each net's
           memory; frozen layers bit-identical after training, and the loss falls
  alone    the DataLayer with nothing behind it, at CAFFE_DATA_THREADS 0 (stock) and the default
  packing  1, 2 and 4 bases, and frozen transfers, at once on the one GPU; nets per GPU recommended
  price    the grid priced by `plan --rates`'s owner (grid/rates.py) from the gpu_check.json just
           written: GPU-hours and wall-clock, at one net per GPU and the recommended N
  agree    one SGD step of the small net (no dropout) on the GPU and on the CPU, each engine
  torch    the same CaffeNet in PyTorch, FP32 and TF32, if torch imports and sees a GPU
  cudnn    on the GPU with cuDNN, under each of SETTINGS (#25's switches): `caffe time` as above
           with the algorithms Caffe's log says it chose, and CURVE_ITER iterations of the base
           through the DataLayer from one init (the solver's random_seed): the largest loss gap to
           the default's against two default runs' spread, and whether the deterministic runs end
           bit-identical, at what ms/iteration

With --dry-run every step that needs no GPU runs on the CPU with the small net and a few
iterations (CI runs it); its figures are the CPU's, the GPU-only steps are recorded as skipped
(SETTINGS only parsed, as `gen --cudnn` parses them).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import numpy as np
from google.protobuf import text_format

from caffe_transfer.common import caffe_env, protos
from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.data.lmdb.datum import datum_parts, write_mean
from caffe_transfer.grid.rates import rate_kind
from caffe_transfer.model.architectures import architecture
from caffe_transfer.model.treatments import parse
from caffe_transfer.runs import cudnn, gen
from caffe_transfer.runs.folder import SNAPSHOT_DIR, snapshot_file, snapshot_prefix
from caffe_transfer.runs.logs import parse_file
from caffe_transfer.runs.transplant import transplant

from gpu_check_report import PACKED, PACKINGS, goals, grid_price, rates_json, recommend, summary  # tools/

# Sized for the 8-minute budget on a fresh 16-core GPU machine, build included (docs/gpu.md).
REAL = {"arch": "caffenet", "images": 1024, "iter": 60, "display": 10, "time_iter": 10}
DRY = {"arch": "small", "images": 128, "iter": 20, "display": 5, "time_iter": 2}
_MEASURE = ("workspace_mb=1024", "algo=measure")
SETTINGS = {"default": (), "measure": _MEASURE, "deterministic": (*_MEASURE, "deterministic=1"),
            "tf32": (*_MEASURE, "deterministic=1", "tf32=1")}  # `--cudnn KEY=VALUE`s, each adding to the last
CURVE_RUNS = {"default": 2, "measure": 1, "deterministic": 3, "tf32": 1}  # default twice: the run-to-run spread
CURVE_ITER = 200
CLASSES = 10
BASE = PACKED["base"]  # measured first: its snapshot seeds the transfers
TRANSFERS = (PACKED["frozen"], "transfer0A0B_1_5", "transfer-ft0A0B_1_3")  # frozen low n, high n, fine-tuned
TOOL_FILLED = "transfer0A0B_1_5"  # in a dry run seeded through the caffe tool, as where pycaffe does not import
AGREE_TOLERANCE = {"caffe": 1e-4, "cudnn": 1e-2}  # of the step's size; cuDNN may use TF32 on Ampere+
_TIME = re.compile(r"\]\s+(?P<layer>\S+)\s+(?P<pass>forward|backward): (?P<ms>[0-9.]+) ms\.")
_AVERAGE = re.compile(r"Average (?P<what>Forward pass|Backward pass|Forward-Backward): (?P<ms>[0-9.]+) ms\.")
_SPEED = re.compile(r"Iteration (?P<iteration>\d+) \((?P<rate>\S+) iter/s")
_ALGORITHMS = re.compile(r"cuDNN convolution (?P<choice>.*)$", re.M)


# --- running Caffe -------------------------------------------------------------------------
def caffe_all(jobs: list[tuple[list, Path, Path]], gpu: bool, threads: int,
              switches: dict[str, str] | None = None) -> tuple[list[str], int | None]:
    """Run the caffe tool once per (args, folder, log) at once, with CAFFE_DATA_THREADS=threads and
    the cuDNN switches (the others empty: Caffe's defaults, whatever the caller's shell set);
    their logs' text and the memory they held together at peak, in MiB: on the GPU the card's
    used memory above what it used before they started, in a dry run their resident memory."""
    env = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1",  # pycaffe's import quiets glog
           "CAFFE_DATA_THREADS": str(threads), **cudnn.environment(switches)}
    before = gpu_used_mib() if gpu else 0
    procs = []
    for args, cwd, log in jobs:
        with open(log, "w") as f:
            procs.append(subprocess.Popen([str(caffe_env.tool("caffe")), *map(str, args)], cwd=cwd, env=env,
                                          stdout=f, stderr=subprocess.STDOUT))
    peak = 0
    while any(p.poll() is None for p in procs):
        held = gpu_used_mib() - before if gpu else sum(resident_mib(p.pid) for p in procs if p.poll() is None)
        peak = max(peak, held)
        time.sleep(0.25 if gpu else 0.05)  # nvidia-smi is slow to ask; a dry run's processes are short
    texts = [log.read_text() for _, _, log in jobs]
    for (args, _, log), proc, text in zip(jobs, procs, texts):
        if proc.returncode != 0:
            raise RuntimeError(f"caffe {args[0]} failed (exit {proc.returncode}), see {log}: "
                               f"{(text.strip().splitlines() or ['?'])[-1]}")
    return texts, peak or None


def caffe(args: list, cwd: Path, log: Path, gpu: bool, threads: int,
          switches: dict[str, str] | None = None) -> tuple[str, int | None]:
    texts, peak = caffe_all([(args, cwd, log)], gpu, threads, switches)
    return texts[0], peak


def gpu_used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "-i", "0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return int(out.split()[0]) if out.strip() else 0


def resident_mib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # it has just exited
        return 0
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return -(-int(found.group(1)) // 1024) if found else 0  # rounded up: a live process holds some


def on(gpu: bool) -> list:
    return ["-gpu", 0] if gpu else []


def speed(log_text: str) -> float:
    """Median ms per iteration over Caffe's `Iteration N (R iter/s, ...)` lines: iteration 0's rate
    means nothing, and the first interval after it holds the warm-up unless it is the only one."""
    rates = [float(m["rate"]) for m in _SPEED.finditer(log_text) if m["iteration"] != "0"]
    if not rates:
        raise RuntimeError("no `Iteration N (R iter/s` line in Caffe's log: too few iterations for its display")
    return 1000 / statistics.median(rates[1:] or rates)


def data_threads() -> int:
    """The CAFFE_DATA_THREADS the nets run with: #30's automatic count (at most 4, no more than the
    CPUs this process may use), set explicitly so that the JSON names what ran; 0 (Caffe's own
    loop) where the build lacks the DataLayer patch, which would ignore the variable."""
    libs = [p for p in (caffe_env.caffe_root() / "lib").glob("libcaffe.so*") if not p.is_symlink()]
    patched = any(b"CAFFE_DATA_THREADS" in p.read_bytes() for p in libs)
    return min(4, len(os.sched_getaffinity(0))) if patched else 0


# --- data and nets -------------------------------------------------------------------------
def make_data(root: Path, size: int, count: int) -> Path:
    """A raw Datum LMDB of `count` images in CLASSES classes, linked in as every dataset gen names."""
    store = root / "_store"
    store.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 192, size=(CLASSES, 3, 1, 1))
    total = np.zeros((3, size, size))
    env = lmdb.open(str(store / "lmdb"), map_size=2 * count * 3 * size * size + (1 << 24))
    with env.begin(write=True) as txn:
        for i in range(count):
            label = i % CLASSES
            image = (rng.integers(0, 64, size=(3, size, size)) + palette[label]).astype(np.uint8)
            head, tail = datum_parts(3, size, size, label)
            txn.put(f"{i:08d}".encode(), head + image.tobytes() + tail)
            total += image
    env.close()
    write_mean(store / "mean.binaryproto", total, count)
    for name in ("half0A_train", "half0A_valid", "half0B_train", "half0B_valid"):
        for path, target in ((gen.db_path(root, name, "lmdb"), store / "lmdb"),
                             (gen.mean_path(root, name), store / "mean.binaryproto")):
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.symlink_to(target)
    return root


def write_run(out: Path, name: str, cfg: dict, data: Path, gpu: bool, iters: int, engine: str | None = None) -> Path:
    solver = {"max_iter": iters, "snapshot": iters, "test_iter": 1, "test_interval": iters,
              "display": cfg["display"], "random_seed": 1}
    options = gen.GenOptions(arch=cfg["arch"], data_root=data, gpu=gpu, engine=engine, solver=solver,
                             fc8_outputs=CLASSES if cfg["arch"] == "small" else None)
    gen.write_runs({out: parse(name)}, options, force=True)
    return out


def train_data_layer(net):
    pb2 = caffe_env.caffe_pb2()
    return next(layer for layer in net.layer
                if layer.type == "Data" and layer.include and layer.include[0].phase == pb2.TRAIN)


def no_snapshots(solver: str) -> str:
    return re.sub(r"(?m)^snapshot: .*$", "snapshot: 0", solver) + "snapshot_after_train: false\n"


def fed_from_memory(run: Path, name: str, constant: bool = True) -> Path:
    """A copy of the run's train net whose TRAIN data layer is Caffe's DummyData of the same shape,
    and a solver that trains it. Caffe refills a DummyData top on the CPU every iteration unless
    its filler is constant (`refill_` in dummy_data_layer.cpp): constant tops are filled once, so
    the net runs at the device's speed. `agree` alone asks for drawn values, for a real gradient."""
    net = protos.read_net(run / "train_val.prototxt")
    layer = train_data_layer(net)
    batch, crop = layer.data_param.batch_size, layer.transform_param.crop_size
    layer.type = "DummyData"
    layer.ClearField("data_param")
    layer.ClearField("transform_param")
    param = layer.dummy_data_param
    param.shape.add().dim.extend([batch, 3, crop, crop])
    param.shape.add().dim.extend([batch])
    if constant:
        param.data_filler.add(type="constant", value=1)
        param.data_filler.add(type="constant", value=0)
    else:
        param.data_filler.add(type="gaussian", std=50)
        param.data_filler.add(type="uniform", min=0, max=CLASSES - 0.01)
    (run / f"{name}.prototxt").write_text(text_format.MessageToString(net))
    solver = (run / "solver.prototxt").read_text().replace('"train_val.prototxt"', f'"{name}.prototxt"')
    solver = solver.replace(f'snapshot_prefix: "{SNAPSHOT_DIR}/', f'snapshot_prefix: "{SNAPSHOT_DIR}/{name}_')
    (run / f"{name}_solver.prototxt").write_text(solver)
    return run / f"{name}_solver.prototxt"


def blobs(path: Path, names: list[str] | None = None) -> dict[str, list[np.ndarray]]:
    net = caffe_env.caffe_pb2().NetParameter()
    net.ParseFromString(path.read_bytes())
    return {layer.name: [np.array(b.data, dtype=np.float32) for b in layer.blobs] for layer in net.layer
            if layer.blobs and (names is None or layer.name in names)}


# --- measurements --------------------------------------------------------------------------
def time_net(cfg: dict, data: Path, out: Path, engine: str, gpu: bool, setting: str = "default",
             switches: dict[str, str] | None = None) -> dict:
    """`caffe time` of the base net at its training batch, fed from memory, under a cuDNN
    setting; the algorithms cuDNN layers chose, as Caffe's log names them."""
    run = write_run(out / f"time_{engine}_{setting}", BASE, cfg, data, gpu, 1, engine=engine)
    fed_from_memory(run, "time")
    text, _ = caffe(["time", "-model", "time.prototxt", "-iterations", cfg["time_iter"], *on(gpu)],
                    run, run / "time.log", gpu, cfg["threads"], switches)
    layers: dict = {}
    for m in _TIME.finditer(text):
        layers.setdefault(m["layer"], {})[m["pass"] + "_ms"] = float(m["ms"])
    average = {m["what"]: float(m["ms"]) for m in _AVERAGE.finditer(text)}
    return {"engine": engine, "setting": setting, "forward_ms": average.get("Forward pass"),
            "backward_ms": average.get("Backward pass"), "iteration_ms": average.get("Forward-Backward"),
            "layers": layers, "algorithms": [m["choice"] for m in _ALGORITHMS.finditer(text)]}


def seed(run: Path, base_model: Path, fill: str | None) -> tuple[Path, str]:
    """A transfer's init, made by `transplant` from the base's snapshot, and how it was filled;
    `fill` forces the route (CAFFE_TRANSFER_FILL), else transplant picks it as for a user."""
    before = os.environ.get(caffe_env.FILL)
    if fill:
        os.environ[caffe_env.FILL] = fill
    try:
        made = transplant(run, base=base_model)
    finally:
        os.environ.pop(caffe_env.FILL, None)
        if before is not None:
            os.environ[caffe_env.FILL] = before
    return made.init, json.loads(made.record.read_text())["filled_by"]


def rate(cfg: dict, data: Path, out: Path, gpu: bool, name: str, base_model: Path | None,
         fill: str | None = None) -> dict:
    """One net alone on the device, through the DataLayer and fed from memory; its memory, and
    what its training shows: frozen layers bit-identical, the loss falling."""
    run = write_run(out / name, name, cfg, data, gpu, cfg["iter"])
    init, filled_by = seed(run, base_model, fill) if base_model else (None, None)
    weights = ["-weights", init] if init else []
    text, mib = caffe(["train", "-solver", "solver.prototxt", *weights, *on(gpu)], run, run / "train.log",
                      gpu, cfg["threads"])
    memory = fed_from_memory(run, "memory")
    memory.write_text(no_snapshots(memory.read_text()))
    memory_text, _ = caffe(["train", "-solver", memory.name, *weights, *on(gpu)], run, run / "memory.log",
                           gpu, cfg["threads"])
    roles = json.loads((run / "treatment.json").read_text())["layers"]
    frozen = [r["name"] for r in roles if r["frozen"]]
    final = run / snapshot_file(snapshot_prefix(name), cfg["iter"])
    before, after = (blobs(Path(init), frozen), blobs(final, frozen)) if frozen else ({}, {})
    losses = [row["loss"] for row in parse_file(run / "train.log").train if "loss" in row]
    data_ms, memory_ms = speed(text), speed(memory_text)
    return {"kind": rate_kind(parse(name)), "n": parse(name).n, "datalayer_ms": data_ms, "memory_ms": memory_ms,
            "gpu_mib": mib, "net": name, "init": "transplant" if init else "fillers", "filled_by": filled_by,
            "init_path": str(init) if init else None, "final": str(final),
            "frozen_identical": {f: all(np.array_equal(a, b) for a, b in zip(before[f], after[f])) for f in frozen},
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "loss_falls": bool(losses and losses[-1] < losses[0])}


def datalayer_alone(cfg: dict, data: Path, out: Path, gpu: bool, threads: int) -> float:
    """ms per batch of the base's TRAIN Data layer with nothing behind it but a Silence layer,
    trained by a solver with nothing to learn (its log's rate skips the prefetched batches)."""
    run = write_run(out / f"alone_{threads}", BASE, cfg, data, gpu, cfg["iter"])
    data_layer = train_data_layer(protos.read_net(run / "train_val.prototxt"))
    net = caffe_env.caffe_pb2().NetParameter(name="DataLayerAlone")
    net.layer.add().CopyFrom(data_layer)
    net.layer.add(name="silence", type="Silence", bottom=list(data_layer.top))
    (run / "alone.prototxt").write_text(text_format.MessageToString(net))
    (run / "alone_solver.prototxt").write_text(
        f'net: "alone.prototxt"\nbase_lr: 0\nlr_policy: "fixed"\nmax_iter: {cfg["iter"]}\n'
        f'display: {cfg["display"]}\nsnapshot_after_train: false\nsolver_mode: {"GPU" if gpu else "CPU"}\n')
    text, _ = caffe(["train", "-solver", "alone_solver.prototxt", *on(gpu)], run, run / "alone.log", gpu, threads)
    return speed(text)


def pack(cfg: dict, data: Path, out: Path, gpu: bool, kind: str, alone: dict) -> list[dict]:
    """k copies of the kind's net at once, through the DataLayer, each in its own folder: their
    aggregate ms per iteration, 1000 / (the sum of their iterations per second); k = 1 is the
    net alone, as `rate` measured it."""
    rows = [{"kind": kind, "nets": 1, "aggregate_ms": alone["datalayer_ms"]}]
    weights = ["-weights", alone["init_path"]] if alone["init_path"] else []
    for k in PACKINGS[1:]:
        jobs = []
        for i in range(k):
            run = write_run(out / f"packed_{kind}_{k}" / str(i), alone["net"], cfg, data, gpu, cfg["iter"])
            (run / "solver.prototxt").write_text(no_snapshots((run / "solver.prototxt").read_text()))
            jobs.append((["train", "-solver", "solver.prototxt", *weights, *on(gpu)], run, run / "train.log"))
        texts, _ = caffe_all(jobs, gpu, cfg["threads"])
        rows.append({"kind": kind, "nets": k, "aggregate_ms": 1000 / sum(1000 / speed(t) for t in texts)})
    return rows


def agree(data: Path, out: Path, engine: str) -> dict:
    """One SGD step (no momentum, no decay, no dropout) of the small net on the CPU and on the GPU
    from the same init and data (fillers draw from Caffe's seeded CPU generator in both modes),
    and a CPU run with learning rate 0 for the init: the GPU's step against the CPU's."""
    cfg = {**DRY, "threads": 0}
    runs = {}
    for key, gpu, lr in (("init", False, "0"), ("cpu", False, "0.01"), ("gpu", True, "0.01")):
        run = write_run(out / f"agree_{engine}_{key}", BASE, cfg, data, gpu, 1, engine=engine)
        solver = fed_from_memory(run, "step", constant=False)
        net = protos.read_net(run / "step.prototxt")
        keep = [layer for layer in net.layer if layer.type != "Dropout"]
        del net.layer[:]
        net.layer.extend(keep)
        (run / "step.prototxt").write_text(text_format.MessageToString(net))
        text = re.sub(r"(?m)^(momentum|weight_decay): .*$", r"\1: 0", solver.read_text())
        solver.write_text(re.sub(r"(?m)^base_lr: .*$", f"base_lr: {lr}", text) + "test_initialization: false\n")
        caffe(["train", "-solver", solver.name, *on(gpu)], run, run / "step.log", gpu, 0)
        losses = [row["loss"] for row in parse_file(run / "step.log").train if "loss" in row]
        runs[key] = (losses[0] if losses else float("nan"),
                     blobs(next((run / SNAPSHOT_DIR).glob("step_*_iter_1.caffemodel"))))
    (_, init), (cpu_loss, cpu), (gpu_loss, gpu) = runs["init"], runs["cpu"], runs["gpu"]
    step = max(float(np.max(np.abs(c - i))) for name in cpu for c, i in zip(cpu[name], init[name]))
    worst = max(float(np.max(np.abs(g - c))) for name in cpu for c, g in zip(cpu[name], gpu[name])) / (step or 1)
    return {"engine": engine, "loss_cpu": cpu_loss, "loss_gpu": gpu_loss, "largest_step": step,
            "max_weight_diff_of_step": worst, "tolerance": AGREE_TOLERANCE[engine],
            "agree": bool(worst <= AGREE_TOLERANCE[engine] and abs(gpu_loss - cpu_loss) <= 1e-3 * abs(cpu_loss))}


def loss_curves(cfg: dict, data: Path, out: Path, settings: dict[str, dict[str, str]]) -> dict:
    """CURVE_RUNS trainings of the base on the GPU with cuDNN through the DataLayer, CURVE_ITER
    iterations at display 1, under each setting, all from one init and one data order (the
    solver's random_seed seeds the fillers, crop, mirror and dropout): each setting's largest
    per-iteration loss gap to the default's first run against the two default runs' (the
    spread); the deterministic runs' final weights bit-identical, and their cost in ms/iteration."""
    runs: dict[str, list] = {}
    for name, count in CURVE_RUNS.items():
        for k in range(count):
            run = write_run(out / f"curve_{name}_{k}", BASE, {**cfg, "display": 1}, data, True, CURVE_ITER, "cudnn")
            text, _ = caffe(["train", "-solver", "solver.prototxt", *on(True)], run, run / "train.log", True,
                            cfg["threads"], settings[name])
            losses = [row["loss"] for row in parse_file(run / "train.log").train if "loss" in row]
            runs.setdefault(name, []).append((losses, speed(text),
                                              blobs(run / snapshot_file(snapshot_prefix(BASE), CURVE_ITER))))
    first = runs["default"][0][0]
    gap = {name: max(abs(a - b) for a, b in zip(first, r[-1][0])) for name, r in runs.items()}
    final = [r[2] for r in runs["deterministic"]]
    ms = {name: statistics.median(x[1] for x in r) for name, r in runs.items()}
    return {"iterations": CURVE_ITER, "spread": gap.pop("default"), "gap_to_default": gap,
            "deterministic_identical": all(np.array_equal(a, b) for other in final[1:] for layer in other
                                           for a, b in zip(final[0][layer], other[layer])),
            "ms_per_iteration": ms, "deterministic_cost": ms["deterministic"] / ms["default"],
            "losses": {name: [x[0] for x in r] for name, r in runs.items()}}


def torch_caffenet(iterations: int = 20) -> dict:
    """CaffeNet (groups, LRN, dropout), batch 256, cuDNN, one SGD step per iteration: FP32 (TF32
    off) and TF32 (on for convolutions and matrix products)."""
    import torch
    from torch import nn

    if not torch.cuda.is_available():
        return {"skipped": "torch sees no GPU"}
    torch.backends.cudnn.benchmark = True
    lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)  # noqa: E731
    net = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), lrn(),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 1000)).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(256, 3, 227, 227, device="cuda")
    y = torch.randint(0, 1000, (256,), device="cuda")
    ms = {}
    for key, tf32 in (("iteration_ms", False), ("tf32_iteration_ms", True)):
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        for i in range(iterations + 5):
            if i == 5:
                torch.cuda.synchronize()
                started = time.perf_counter()
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        torch.cuda.synchronize()
        ms[key] = (time.perf_counter() - started) * 1000 / iterations
    return {"torch": torch.__version__, **ms}


# --- the report ----------------------------------------------------------------------------
def cuda_version() -> str:
    """nvcc's release; where there is none (the Docker image keeps only the runtime), the version
    of NVIDIA's CUDA runtime wheel."""
    if shutil.which("nvcc"):
        found = re.search(r"release ([0-9.]+)", subprocess.run(["nvcc", "--version"], capture_output=True,
                                                                text=True).stdout)
        return found.group(1) if found else "unknown"
    try:
        return "runtime " + importlib.metadata.version("nvidia-cuda-runtime")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def refuse_unfit_build() -> None:
    """A GPU run needs a CUDA build with code for the card: one line and exit 1 otherwise, before
    anything is measured."""
    if not caffe_env.cuda_build():
        sys.exit(f"[gpu_check] error: the Caffe in {caffe_env.caffe_root()} is a CPU-only build: expected a "
                 "CUDA build (CAFFE_CUDA=1 tools/install_caffe.sh, or the caffe-transfer:cuda image)")
    unserved = caffe_env.unserved_gpus()
    if unserved:
        sys.exit(f"[gpu_check] error: the Caffe in {caffe_env.caffe_root()} has no code for compute capability "
                 f"{', '.join(unserved)} ({caffe_env.kernels()}): rebuild with {caffe_env.arch_bin(unserved)}")


def device(gpu: bool) -> dict:
    if not gpu:
        return {"name": f"CPU, {len(os.sched_getaffinity(0))} cores (dry run)", "driver": "none", "cuda": "none",
                "cudnn": caffe_env.cudnn_version(), "memory_mib": None}
    smi = subprocess.run(["nvidia-smi", "-i", "0", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
    name, driver, memory = [x.strip() for x in smi.split(",")]
    return {"name": name, "driver": driver, "cuda": cuda_version(),
            "cudnn": caffe_env.cudnn_version(), "memory_mib": int(memory)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--build-seconds", type=float)
    args = ap.parse_args()
    gpu = not args.dry_run
    if gpu:
        refuse_unfit_build()
    cfg = {**(DRY if args.dry_run else REAL), "threads": data_threads()}
    out = args.out.resolve()
    arch = architecture(cfg["arch"], CLASSES)
    r: dict = {"dry_run": args.dry_run, "build_seconds": args.build_seconds, "caffe_build": caffe_env.build_stamp(),
               "arch": cfg["arch"], "batch_size": arch.train_batch, "device": device(gpu),
               "data_threads": cfg["threads"]}
    r["cudnn_settings"] = settings = {name: dict(cudnn.parse_switch(*s.split("=", 1)) for s in switches)
                                      for name, switches in SETTINGS.items()}
    data = make_data(out / "data", arch.image_size, cfg["images"])
    engines = ["caffe", "cudnn"] if r["device"]["cudnn"] else ["caffe"]
    timed = [(e, "default") for e in engines] + [("cudnn", s) for s in list(SETTINGS)[1:] if gpu and "cudnn" in engines]
    r["time"] = [time_net(cfg, data, out, e, gpu, s, settings[s]) for e, s in timed]
    base = rate(cfg, data, out, gpu, BASE, None)
    r["rates"] = [base] + [rate(cfg, data, out, gpu, name, Path(base["final"]),
                                "caffe" if args.dry_run and name == TOOL_FILLED else None) for name in TRANSFERS]
    r["datalayer_alone_ms"] = {str(t): datalayer_alone(cfg, data, out, gpu, t) for t in sorted({0, cfg["threads"]})}
    r["packing"] = [row for kind, net in PACKED.items()
                    for row in pack(cfg, data, out, gpu, kind, next(x for x in r["rates"] if x["net"] == net))]
    r["recommended_nets_per_gpu"], r["recommendation"] = recommend(r["rates"], r["packing"], r["device"]["memory_mib"])
    write_atomic(out / "gpu_check.json", json.dumps(rates_json(r), indent=2) + "\n")
    r["price"] = grid_price(out / "gpu_check.json", r["recommended_nets_per_gpu"])  # what `plan --rates` reads
    r["agree"] = [agree(data, out, e) for e in engines] if gpu else "skipped: needs a GPU"
    r["curves"] = loss_curves(cfg, data, out, settings) if gpu and "cudnn" in engines else "skipped: needs a GPU"
    try:
        r["torch"] = torch_caffenet() if gpu else "skipped: needs a GPU"
    except ImportError:
        r["torch"] = "skipped: torch does not import"
    r["goals"] = goals(r)
    write_atomic(out / "report.json", json.dumps(r, indent=2) + "\n")
    print(summary(r))


if __name__ == "__main__":
    main()
