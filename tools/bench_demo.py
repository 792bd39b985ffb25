#!/usr/bin/env python3
"""Benchmark: the demo's presets from scratch (data, training, report), wall clock and CPU.

Each preset runs in a fresh temporary folder with all cores, as `caffe-transfer demo` would.
Besides wall-clock minutes it prints the CPU-seconds this process and its children (Caffe, the
LMDB writers) used, and from them the wall time an otherwise idle machine with this many cores
would take (CPU / cores): on a shared machine the wall clock says more about the neighbours.
Usage: tools/bench_demo.py [quick] [standard] [long]   (default: quick and standard)
"""

import os
import sys
import tempfile
import time

from caffe_transfer.demo import PRESETS, grid, run_demo


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> None:
    names = sys.argv[1:] or ["quick", "standard"]
    cores = os.cpu_count() or 1
    print(f"{cores} cores")
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            start, cpu = time.perf_counter(), _cpu()
            result = run_demo(tmp, name, progress=False)
            minutes, cpu = (time.perf_counter() - start) / 60, _cpu() - cpu
            runs = sum(len(v) for v in grid(PRESETS[name]).values())
            print(f"{name}: {result.grid.trained}/{runs} runs, {PRESETS[name].solver['max_iter']} "
                  f"iterations each, {minutes:.1f} min wall, {cpu:.0f} CPU-s "
                  f"(= {cpu / cores / 60:.1f} min on {cores} idle cores)")


if __name__ == "__main__":
    main()
