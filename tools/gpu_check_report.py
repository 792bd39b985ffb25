"""The GPU check's judgement of its figures: which nets the DataLayer limits, how many nets per
GPU to run, the issues' goals; the grid's cost, asked of `plan --rates`'s owner
(caffe_transfer/grid/rates.py) with the check's own gpu_check.json (schema
caffe-transfer/gpu-check/1), which this module shapes; and the one-screen summary.
tools/gpu_check.py measures; this module only reads its figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from caffe_transfer.grid.plan import select
from caffe_transfer.grid.rates import SCHEMA, price, read_rates
from caffe_transfer.runs import cudnn

PACKED = {"base": "half0A", "frozen": "transfer0A0B_1_1"}  # the frozen net least bound by its data: the cautious ratio
PLURAL = {"base": "bases", "frozen": "frozen transfers"}
PACKINGS = (1, 2, 4)
LIMIT_MARGIN = 0.10  # the DataLayer limits a net when training through it is more than 10% slower (#30's goal)
PACK_MARGIN = 0.15   # k packed nets reach the compute limit when their aggregate is within 15% of it (#24's goal)
GRID_GOAL_HOURS = 900
GPUS = 8  # the wall-clock the summary prints, as `plan --rates FILE --gpus 8` does


def limited_by(x: dict) -> float | None:
    """How many times slower a net trains through the DataLayer than from memory, where that is
    more than LIMIT_MARGIN: like against like, the same net fed both ways."""
    ratio = x["datalayer_ms"] / x["memory_ms"]
    return ratio if ratio > 1 + LIMIT_MARGIN else None


def recommend(rates: list[dict], packing: list[dict], memory_mib: int | None) -> tuple[int, str]:
    """Nets per GPU: the smallest measured k at which every packed kind's aggregate ms per
    iteration is within PACK_MARGIN of its compute limit (the same net alone, fed from memory);
    where none is, the k with the lowest aggregate relative to that limit, summed over the kinds.
    Only k whose nets fit into the GPU's memory (where known) are candidates."""
    alone = {kind: next(r for r in rates if r["net"] == net) for kind, net in PACKED.items()}
    fits = {k for k in PACKINGS if not memory_mib or k * max(a["gpu_mib"] or 0 for a in alone.values()) <= memory_mib}
    ratio = {k: {p["kind"]: p["aggregate_ms"] / alone[p["kind"]]["memory_ms"] for p in packing if p["nets"] == k}
             for k in fits}
    reached = [k for k in sorted(ratio) if max(ratio[k].values()) <= 1 + PACK_MARGIN]
    if reached:
        return reached[0], f"the fewest nets within {PACK_MARGIN:.0%} of the compute limit"
    best = min(ratio, key=lambda k: sum(ratio[k].values()))
    return best, f"none within {PACK_MARGIN:.0%} of the compute limit: the lowest measured aggregate"


def grid_price(rates_file: Path, nets_per_gpu: int) -> dict:
    """The authors' grid priced by `plan --rates`'s owner from the check's own file, as a plan of
    the measured architecture: GPU-hours and wall-clock on GPUS GPUs at one net per GPU and at
    `nets_per_gpu` (`plan.estimate`'s figures)."""
    rates = read_rates(rates_file)
    grid = select()
    return {"nets": len(grid), "one_net": price(rates, rates.architecture, grid, GPUS, 1),
            "recommended": price(rates, rates.architecture, grid, GPUS, nets_per_gpu)}


def rates_json(r: dict) -> dict:
    """The agreed file `plan --rates` reads: the schema's keys and nothing else."""
    keys = ("kind", "n", "datalayer_ms", "memory_ms", "gpu_mib")
    return {"schema": SCHEMA, "architecture": r["arch"], "batch_size": r["batch_size"], "device": r["device"],
            "data_threads": r["data_threads"], "rates": [{k: x[k] for k in keys} for x in r["rates"]],
            "datalayer_alone_ms": r["datalayer_alone_ms"],
            "packing": r["packing"], "recommended_nets_per_gpu": r["recommended_nets_per_gpu"]}


def goals(r: dict) -> dict:
    """The issues' goals, read from the figures (None where a figure is missing)."""
    # `caffe time` per engine at the default settings, and cuDNN's under each other setting by its name
    ms = {t["engine"] if t["setting"] == "default" else t["setting"]: t["iteration_ms"] for t in r["time"]}
    torch = r["torch"] if isinstance(r["torch"], dict) else {}

    def within(mine: str, theirs: str, factor: float) -> bool | None:
        return ms[mine] / torch[theirs] <= factor if ms.get(mine) and torch.get(theirs) else None

    speedup = ms["caffe"] / ms["cudnn"] if ms.get("caffe") and ms.get("cudnn") else None
    alone = r["datalayer_alone_ms"]
    threads = str(r["data_threads"])
    near = {x["net"]: limited_by(x) is None for x in r["rates"] if x["kind"] in ("base", "frozen")}
    return {"cudnn_speedup_at_least_2.5": speedup >= 2.5 if speedup else None,
            "within_2x_of_torch": within("cudnn", "iteration_ms", 2),
            "measure_1024_within_1.2x_of_torch_fp32": within("measure", "iteration_ms", 1.2),
            "tf32_within_1.3x_of_torch_tf32": within("tf32", "tf32_iteration_ms", 1.3),
            "grid_at_most_900_gpu_hours": r["price"]["recommended"]["gpu_hours"] <= GRID_GOAL_HOURS,
            "datalayer_alone_4x_stock": alone["0"] / alone[threads] >= 4 if threads != "0" else None,
            "base_and_frozen_within_10%_of_memory": all(near.values()), "per_net": near}


def summary(r: dict) -> str:
    d, alone = r["device"], r["datalayer_alone_ms"]
    lines = [f"gpu_check{' (dry run, CPU, small net: CPU figures)' if r['dry_run'] else ''}: {d['name']}, "
             f"driver {d['driver']}, CUDA {d['cuda']}, cuDNN {d['cudnn'] or 'none'}, {d['memory_mib'] or '-'} MiB",
             f"  caffe: {r['caffe_build']}; build {r['build_seconds'] or '-'} s; {r['arch']} batch {r['batch_size']}; "
             f"CAFFE_DATA_THREADS={r['data_threads']}" + ("" if r["data_threads"] else " (no DataLayer patch)")]
    lines.append("  cuDNN settings: " + "; ".join(f"{name} {cudnn.describe(switches) or '(none set)'}"
                                                  for name, switches in r["cudnn_settings"].items()))
    for x in r["time"]:
        setting = "" if x["setting"] == "default" else f", {x['setting']}"
        lines.append(f"  caffe time ({x['engine']}{setting}): forward {x['forward_ms']} ms, "
                     f"backward {x['backward_ms']} ms, iteration {x['iteration_ms']} ms")
    lines.append("  DataLayer alone: " + ", ".join(f"{ms:.1f} ms/batch at {t} threads" for t, ms in alone.items()))
    lines.append(f"  {'net (alone)':22} {'kind':14} {'DataLayer':>9} {'memory':>7} {'MiB':>6}  ms/iteration; verdict "
                 f"(margin {LIMIT_MARGIN:.0%}); loss")
    for x in r["rates"]:
        by = limited_by(x)
        verdict = f"DataLayer limits this net by {by:.2f}x" if by else "DataLayer not limiting"
        kind = x["kind"] + (f" n={x['n']}" if x["n"] else "")
        frozen = f"; frozen bit-identical: {all(x['frozen_identical'].values())}" if x["frozen_identical"] else ""
        lines.append(f"  {x['net']:22} {kind:14} {x['datalayer_ms']:9.1f} {x['memory_ms']:7.1f} "
                     f"{x['gpu_mib'] or '-':>6}  {verdict}; {x['loss_first']} -> {x['loss_last']}{frozen}")
    routes = sorted({x["filled_by"] for x in r["rates"] if x["filled_by"]})
    lines.append(f"  transfers seeded by transplant, filled by {' and '.join(routes)} (CAFFE_TRANSFER_FILL's routes)")
    for kind in PACKED:
        lines.append(f"  packed {PLURAL[kind]}, ms/iteration in aggregate: " + ", ".join(
            f"{p['nets']} net{'s' if p['nets'] > 1 else ''} {p['aggregate_ms']:.1f}" for p in r["packing"]
            if p["kind"] == kind))
    p = r["price"]
    lines.append(f"  nets per GPU: {r['recommended_nets_per_gpu']} ({r['recommendation']})")
    lines.append(f"  the grid, {p['nets']} nets, as `plan --rates gpu_check.json --gpus {GPUS}` prices it:")
    for e in [p["one_net"]] + ([p["recommended"]] if r["recommended_nets_per_gpu"] > 1 else []):
        lines.append(f"    {e['nets_per_gpu']} net(s) per GPU: {e['gpu_hours']:,.0f} GPU-hours, "
                     f"{e['wall_hours']:,.0f} h wall-clock on {GPUS} GPUs")
    for a in r["agree"] if isinstance(r["agree"], list) else []:
        lines.append(f"  GPU vs CPU ({a['engine']}): loss {a['loss_gpu']} vs {a['loss_cpu']}, step agrees within "
                     f"{a['max_weight_diff_of_step']:.2e} of its size (tolerance {a['tolerance']}): {a['agree']}")
    if isinstance(r["agree"], str):
        lines.append(f"  GPU vs CPU: {r['agree']}")
    c = r["curves"]
    if isinstance(c, str):
        lines.append(f"  cuDNN loss curves: {c}")
    else:
        ms, spread = c["ms_per_iteration"], c["spread"]
        lines.append(f"  cuDNN loss curves, {c['iterations']} iterations from one init: two default runs differ by "
                     f"at most {spread:.3g} (the spread); largest gap to default: " + ", ".join(
                         f"{k} {v:.3g}" + (f" ({v / spread:.2f}x the spread)" if spread else "")
                         for k, v in c["gap_to_default"].items()))
        lines.append(f"  deterministic: its {len(c['losses']['deterministic'])} runs' final weights bit-identical: "
                     f"{c['deterministic_identical']}; {ms['deterministic']:.1f} ms/iteration against "
                     f"{ms['default']:.1f} by default ({c['deterministic_cost']:.2f}x)")
    lines.append(f"  torch CaffeNet: {r['torch'] if isinstance(r['torch'], str) else json.dumps(r['torch'])}")
    g = {k: v for k, v in r["goals"].items() if k != "per_net"}
    lines.append(f"  goals{' (of CPU figures: they mean nothing here)' if r['dry_run'] else ''}: "
                 + ", ".join(f"{k} {'-' if v is None else v}" for k, v in g.items()))
    return "\n".join(lines)
