"""The GPU acceptance in one run, after tools/gpu_check.sh has built Caffe: measures, checks, and
writes OUT/gpu_check.json with a one-screen summary.

  data    a generated raw LMDB (class-coloured noise, so that a net can learn it) and its mean
  time    `caffe time` of CaffeNet at batch 256 (fed from memory), engine CAFFE and engine CUDNN
  train   `caffe train` of a gen-written transfer0A0B_1_3, its init made by `transplant` from a
          briefly trained base, through Caffe's DataLayer; then the same net fed from memory
  frozen  conv1-3 bit-identical after training; the loss falls
  agree   one SGD step of the small net (no dropout) on the GPU and on the CPU, each engine
  torch   the same CaffeNet in PyTorch, if torch imports and sees a GPU
  grid    the grid's GPU-hours and wall-clock on 1 and 8 GPUs at the measured s/iteration

With --dry-run every step that needs no GPU runs on the CPU with the small net and a few
iterations (CI runs it); the GPU-only steps are recorded as skipped, never as passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

import lmdb
import numpy as np
from google.protobuf import text_format

from caffe_transfer.common import caffe_env, protos
from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.lmdb.datum import datum_parts, write_mean
from caffe_transfer.grid import plan
from caffe_transfer.model.architectures import architecture
from caffe_transfer.model.treatments import parse
from caffe_transfer.runs import gen
from caffe_transfer.runs.folder import SNAPSHOT_DIR, snapshot_file, snapshot_prefix
from caffe_transfer.runs.logs import parse_file

# (arch, images, iterations of the base, of each timed training, of `caffe time`)
REAL = {"arch": "caffenet", "images": 1024, "base_iter": 20, "train_iter": 300, "time_iter": 10}
DRY = {"arch": "small", "images": 128, "base_iter": 4, "train_iter": 20, "time_iter": 2}
CLASSES = 10
AGREE_TOLERANCE = {"caffe": 1e-4, "cudnn": 1e-2}  # of the step's size; cuDNN may use TF32 on Ampere+
_TIME = re.compile(r"\]\s+(?P<layer>\S+)\s+(?P<pass>forward|backward): (?P<ms>[0-9.]+) ms\.")
_AVERAGE = re.compile(r"Average (?P<what>Forward pass|Backward pass|Forward-Backward): (?P<ms>[0-9.]+) ms\.")
_SPEED = re.compile(r"Iteration (?P<iteration>\d+) \((?P<rate>\S+) iter/s")


def caffe(args: list, cwd: Path, log: Path) -> str:
    """Run the caffe tool; its whole output goes to `log`, a failure names the log's last line."""
    env = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1"}  # pycaffe's import quiets glog
    proc = subprocess.run([str(caffe_env.tool("caffe")), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"caffe {args[0]} failed (exit {proc.returncode}), see {log}: "
                           f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc.stderr


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
    solver = {"max_iter": iters, "snapshot": iters, "test_iter": 1, "test_interval": iters, "display": 10,
              "random_seed": 1}
    options = gen.GenOptions(arch=cfg["arch"], data_root=data, gpu=gpu, engine=engine, solver=solver,
                             fc8_outputs=CLASSES if cfg["arch"] == "small" else None)
    gen.write_runs({out: parse(name)}, options, force=True)
    return out


def fed_from_memory(run: Path, name: str, noise: bool = True) -> Path:
    """A copy of the run's train net whose TRAIN data layer is Caffe's DummyData of the same shape:
    no LMDB read, no decoding, no transform; and a solver that trains it."""
    pb2 = caffe_env.caffe_pb2()
    net = protos.read_net(run / "train_val.prototxt")
    for layer in net.layer:
        if layer.type == "Data" and layer.include and layer.include[0].phase == pb2.TRAIN:
            batch, crop = layer.data_param.batch_size, layer.transform_param.crop_size
            layer.type = "DummyData"
            layer.ClearField("data_param")
            layer.ClearField("transform_param")
            param = layer.dummy_data_param
            param.shape.add().dim.extend([batch, 3, crop, crop])
            param.shape.add().dim.extend([batch])
            param.data_filler.add(type="gaussian" if noise else "constant", std=50)
            param.data_filler.add(type="uniform", min=0, max=CLASSES - 0.01)
    (run / f"{name}.prototxt").write_text(text_format.MessageToString(net))
    solver = (run / "solver.prototxt").read_text().replace('"train_val.prototxt"', f'"{name}.prototxt"')
    solver = solver.replace(f'snapshot_prefix: "{SNAPSHOT_DIR}/', f'snapshot_prefix: "{SNAPSHOT_DIR}/{name}_')
    (run / f"{name}_solver.prototxt").write_text(solver)
    return run / f"{name}_solver.prototxt"


def speed(log_text: str) -> float:
    """Median ms per iteration over Caffe's `Iteration N (R iter/s, ...)` lines: iteration 0's rate
    means nothing, and the first interval after it holds the warm-up unless it is the only one."""
    rates = [float(m["rate"]) for m in _SPEED.finditer(log_text) if m["iteration"] != "0"]
    if not rates:
        raise RuntimeError("no `Iteration N (R iter/s` line in Caffe's log: too few iterations for its display")
    return 1000 / statistics.median(rates[1:] or rates)


def time_net(cfg: dict, data: Path, out: Path, engine: str, gpu: bool) -> dict:
    """`caffe time` of the base net at its training batch, fed from memory."""
    run = write_run(out / f"time_{engine}", "half0A", cfg, data, gpu, 1, engine=engine)
    fed_from_memory(run, "time", noise=False)
    text = caffe(["time", "-model", "time.prototxt", "-iterations", cfg["time_iter"], *(["-gpu", 0] if gpu else [])],
                 run, run / "time.log")
    layers: dict = {}
    for m in _TIME.finditer(text):
        layers.setdefault(m["layer"], {})[m["pass"] + "_ms"] = float(m["ms"])
    average = {m["what"]: float(m["ms"]) for m in _AVERAGE.finditer(text)}
    return {"engine": engine, "forward_ms": average.get("Forward pass"), "backward_ms": average.get("Backward pass"),
            "iteration_ms": average.get("Forward-Backward"), "layers": layers}


def blobs(path: Path) -> dict[str, list[np.ndarray]]:
    net = caffe_env.caffe_pb2().NetParameter()
    net.ParseFromString(path.read_bytes())
    return {layer.name: [np.array(b.data, dtype=np.float32) for b in layer.blobs] for layer in net.layer if layer.blobs}


def train_transfer(cfg: dict, data: Path, out: Path, gpu: bool) -> dict:
    device = ["-gpu", 0] if gpu else []
    base = write_run(out / "half0A", "half0A", cfg, data, gpu, cfg["base_iter"])
    caffe(["train", "-solver", "solver.prototxt", *device], base, base / "train.log")
    run = write_run(out / "transfer0A0B_1_3", "transfer0A0B_1_3", cfg, data, gpu, cfg["train_iter"])
    base_model = base / snapshot_file(snapshot_prefix("half0A"), cfg["base_iter"])
    try:  # transplant needs pycaffe; without it Caffe's own --weights copies the same layers by name
        caffe_env.pycaffe()
    except CaffeTransferError as e:
        init, how = base_model, f"caffe --weights (no pycaffe: {e})"
    else:
        from caffe_transfer.runs.transplant import transplant

        init, how = transplant(run, base=base_model).init, "transplant"
    started = time.monotonic()
    text = caffe(["train", "-solver", "solver.prototxt", "-weights", init, *device], run, run / "train.log")
    wall = time.monotonic() - started
    memory = fed_from_memory(run, "memory")
    memory_text = caffe(["train", "-solver", memory.name, "-weights", init, *device], run, run / "memory.log")
    final = run / snapshot_file(snapshot_prefix("transfer0A0B_1_3"), cfg["train_iter"])
    before, after = blobs(Path(init)), blobs(final)
    roles = json.loads((run / "treatment.json").read_text())["layers"]
    frozen = [r["name"] for r in roles if r["frozen"]]
    identical = {n: all(np.array_equal(a, b) for a, b in zip(before[n], after[n])) for n in frozen}
    losses = [row["loss"] for row in parse_file(run / "train.log").train if "loss" in row]
    data_ms, memory_ms = speed(text), speed(memory_text)
    return {"init": how, "iterations": cfg["train_iter"], "wall_s": round(wall, 1),
            "datalayer_ms": data_ms, "memory_ms": memory_ms,
            "datalayer_limits": bool(data_ms > 1.1 * memory_ms), "frozen_identical": identical,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "loss_falls": bool(losses and losses[-1] < losses[0])}


def agree(data: Path, out: Path, engine: str) -> dict:
    """One SGD step (no momentum, no decay, no dropout) of the small net on the CPU and on the GPU
    from the same init and data (fillers and DummyData draw from Caffe's seeded CPU generator in
    both modes), and a CPU run with learning rate 0 for the init: the GPU's step against the CPU's."""
    cfg = {**DRY, "arch": "small"}
    runs = {}
    for key, gpu, rate in (("init", False, "0"), ("cpu", False, "0.01"), ("gpu", True, "0.01")):
        run = write_run(out / f"agree_{engine}_{key}", "half0A", cfg, data, gpu, 1, engine=engine)
        solver = fed_from_memory(run, "step")
        net = protos.read_net(run / "step.prototxt")
        keep = [layer for layer in net.layer if layer.type != "Dropout"]
        del net.layer[:]
        net.layer.extend(keep)
        (run / "step.prototxt").write_text(text_format.MessageToString(net))
        text = re.sub(r"(?m)^(momentum|weight_decay): .*$", r"\1: 0", solver.read_text())
        solver.write_text(re.sub(r"(?m)^base_lr: .*$", f"base_lr: {rate}", text) + "test_initialization: false\n")
        caffe(["train", "-solver", solver.name, *(["-gpu", 0] if gpu else [])], run, run / "step.log")
        losses = [row["loss"] for row in parse_file(run / "step.log").train if "loss" in row]
        runs[key] = (losses[0] if losses else float("nan"),
                     blobs(next((run / SNAPSHOT_DIR).glob("step_*_iter_1.caffemodel"))))
    init, (cpu_loss, cpu), (gpu_loss, gpu) = runs["init"][1], runs["cpu"], runs["gpu"]
    step = max(float(np.max(np.abs(c - i))) for name in cpu for c, i in zip(cpu[name], init[name]))
    worst = max(float(np.max(np.abs(g - c))) for name in cpu for c, g in zip(cpu[name], gpu[name])) / (step or 1)
    return {"engine": engine, "loss_cpu": cpu_loss, "loss_gpu": gpu_loss, "largest_step": step,
            "max_weight_diff_of_step": worst, "tolerance": AGREE_TOLERANCE[engine],
            "agree": bool(worst <= AGREE_TOLERANCE[engine] and abs(gpu_loss - cpu_loss) <= 1e-3 * abs(cpu_loss))}


def torch_caffenet(iterations: int = 20) -> dict:
    """CaffeNet (groups, LRN, dropout), batch 256, FP32 without TF32, cuDNN, one SGD step per iteration."""
    import torch
    from torch import nn

    if not torch.cuda.is_available():
        return {"skipped": "torch sees no GPU"}
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
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
    for i in range(iterations + 5):
        if i == 5:
            torch.cuda.synchronize()
            started = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.cuda.synchronize()
    return {"torch": torch.__version__, "iteration_ms": (time.perf_counter() - started) * 1000 / iterations}


def grid(iteration_ms: float) -> dict:
    runs = plan.plan_runs(plan.select())
    return {f"{n}_gpus": plan.estimate(runs, iteration_ms / 1000, n) for n in (1, 8)}


def goals(r: dict) -> dict:
    """The issue's speed goals, read from the figures (None where a figure is missing)."""
    ms = {t["engine"]: t["iteration_ms"] for t in r["time"]}
    torch_ms = r["torch"].get("iteration_ms") if isinstance(r["torch"], dict) else None
    speedup = ms["caffe"] / ms["cudnn"] if ms.get("caffe") and ms.get("cudnn") else None
    vs_torch = ms["cudnn"] / torch_ms if ms.get("cudnn") and torch_ms else None
    return {"cudnn_speedup": speedup, "cudnn_speedup_at_least_2.5": speedup >= 2.5 if speedup else None,
            "cudnn_over_torch": vs_torch, "within_2x_of_torch": vs_torch <= 2 if vs_torch else None,
            "datalayer_not_limiting": not r["train"]["datalayer_limits"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--build-seconds", type=float)
    args = ap.parse_args()
    gpu = not args.dry_run
    cfg = DRY if args.dry_run else REAL
    out = args.out.resolve()
    report: dict = {"dry_run": args.dry_run, "build_seconds": args.build_seconds,
                    "caffe_build": caffe_env.build_stamp(), "cudnn": caffe_env.cudnn_version(), "arch": cfg["arch"]}
    if gpu:
        report["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total",
                                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    data = make_data(out / "data", architecture(cfg["arch"], CLASSES).image_size, cfg["images"])
    engines = ["caffe", "cudnn"] if report["cudnn"] else ["caffe"]
    report["time"] = [time_net(cfg, data, out, e, gpu) for e in engines]
    report["train"] = train_transfer(cfg, data, out, gpu)
    report["agree"] = [agree(data, out, e) for e in engines] if gpu else "skipped: needs a GPU"
    try:
        report["torch"] = torch_caffenet() if gpu else "skipped: needs a GPU"
    except ImportError:
        report["torch"] = "skipped: torch does not import"
    report["grid"] = grid(report["train"]["datalayer_ms"])
    report["goals"] = goals(report)
    write_atomic(out / "gpu_check.json", json.dumps(report, indent=2) + "\n")
    print(summary(report))


def summary(r: dict) -> str:
    t = r["train"]
    lines = [f"gpu_check{' (dry run, CPU, small net)' if r['dry_run'] else ''}: {r.get('gpu', 'no GPU')}",
             f"  caffe: {r['caffe_build']}; build {r['build_seconds'] or '-'} s; cuDNN {r['cudnn'] or 'none'}"]
    for x in r["time"]:
        lines.append(f"  caffe time ({x['engine']}): forward {x['forward_ms']} ms, backward {x['backward_ms']} ms, "
                     f"iteration {x['iteration_ms']} ms")
    lines += [f"  train transfer0A0B_1_3 ({t['init']}): DataLayer {t['datalayer_ms']:.1f} ms/iter, from memory "
              f"{t['memory_ms']:.1f} ms/iter{' (the DataLayer limits the speed)' if t['datalayer_limits'] else ''}",
              f"  frozen layers bit-identical: {all(t['frozen_identical'].values())} ({', '.join(t['frozen_identical'])}); "
              f"loss {t['loss_first']} -> {t['loss_last']} (falls: {t['loss_falls']})"]
    for a in r["agree"] if isinstance(r["agree"], list) else []:
        lines.append(f"  GPU vs CPU ({a['engine']}): loss {a['loss_gpu']} vs {a['loss_cpu']}, step agrees within "
                     f"{a['max_weight_diff_of_step']:.2e} of its size (tolerance {a['tolerance']}): {a['agree']}")
    if isinstance(r["agree"], str):
        lines.append(f"  GPU vs CPU: {r['agree']}")
    torch_line = r["torch"] if isinstance(r["torch"], str) else json.dumps(r["torch"])
    lines.append(f"  torch CaffeNet: {torch_line}")
    g = r["goals"]
    lines.append(f"  goals: cuDNN/Caffe speedup {g['cudnn_speedup'] or '-'} (>= 2.5: {g['cudnn_speedup_at_least_2.5']}); "
                 f"cuDNN/torch {g['cudnn_over_torch'] or '-'} (<= 2: {g['within_2x_of_torch']}); "
                 f"DataLayer not limiting: {g['datalayer_not_limiting']}")
    for key, e in r["grid"].items():
        lines.append(f"  grid at {e['iter_seconds'] * 1000:.1f} ms/iter on {e['gpus']} GPU(s): "
                     f"{e['gpu_hours']:,.0f} GPU-hours, {e['wall_hours']:,.0f} h wall-clock")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
