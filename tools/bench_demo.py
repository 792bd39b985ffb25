#!/usr/bin/env python3
"""Benchmark: the demo's presets from scratch (data, training, report), wall-clock minutes.

Each preset runs in a fresh temporary folder with all cores, as `caffe-transfer demo` would.
Usage: tools/bench_demo.py [quick] [standard]   (default: both)
"""

import os
import sys
import tempfile
import time

from caffe_transfer.demo import PRESETS, grid, run_demo


def main() -> None:
    names = sys.argv[1:] or list(PRESETS)
    print(f"{os.cpu_count()} cores")
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = run_demo(tmp, name, progress=False)
            minutes = (time.perf_counter() - start) / 60
            done = result.grid.count("finished")
            print(f"{name}: {done}/{len(grid(PRESETS[name]))} runs, "
                  f"{PRESETS[name].solver['max_iter']} iterations each, {minutes:.1f} min")


if __name__ == "__main__":
    main()
