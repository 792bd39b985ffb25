#!/usr/bin/env python3
"""Benchmark: parse all of the authors' logs (about 350 gzipped files, 83 MB, 490 MB of text).

Times the report's path (test tables only, all cores) and a full parse (train and test tables,
one core), and prints both. Usage: tools/bench_logs.py [RESULTS_DIR]
"""

import sys
import time
from pathlib import Path

from caffe_transfer.results import report
from caffe_transfer.runs import logs

DEFAULT = Path(__file__).resolve().parent.parent.parent / "shared/reference/convnet_transfer/results"


def main() -> None:
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    folders = sorted(p for p in results.iterdir() if p.is_dir())
    files = sum(len(logs.log_files(p)) for p in folders)
    size = sum(f.stat().st_size for p in folders for f in logs.log_files(p)) / 1e6
    start = time.perf_counter()
    runs, _ = report.collect(results)
    test_only = time.perf_counter() - start
    start = time.perf_counter()
    rows = sum(len(t.train) + len(t.test) for t in (logs.read_run(p) for p in folders))
    full = time.perf_counter() - start
    print(f"{len(runs)} runs, {files} log files, {size:.0f} MB gzipped")
    print(f"report path (test tables, all cores): {test_only:.2f} s")
    print(f"full parse (train + test tables, {rows} rows, one core): {full:.2f} s")


if __name__ == "__main__":
    main()
