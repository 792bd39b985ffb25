#!/usr/bin/env python3
"""Benchmark: the 10 train halves of the paper (random splits 0-3 and natural/man-made, A and B)
from one decoding pass (`build_many`, what `prepare` runs) against 10 `make-lmdb` runs.

Generates a tree of ImageNet-like JPEGs of 500x375 in 1000 class folders (default 2 per class,
2,000 images), writes the whole list and the splits, then builds the 10 halves both ways and
reports the CPU each used (this process and its decoders) and the wall-clock time. The goal: one
pass takes at least 4x less CPU than the 10 runs. Each half holds half the images, so 10 runs
decode every image 5 times; one pass decodes it once and writes it 5 times.
Usage: tools/bench_prepare.py [--per-class N] [--encoded] [--workdir DIR]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lmdb import images_in  # noqa: E402

from caffe_transfer.data.lists import class_folders, tree_list  # noqa: E402
from caffe_transfer.data.lmdb import BuildOptions, Dataset, build, build_many  # noqa: E402
from caffe_transfer.data.splits import write_splits  # noqa: E402

HALVES = [f"half{s}{h}_train" for s in ("0", "1", "2", "3", "natman") for h in "AB"]


def cpu_seconds(run) -> tuple[float, float, float]:
    """CPU seconds that `run()` took in this process (the writer) and in its children (the
    decoders), and wall seconds."""
    before, start = os.times(), time.perf_counter()
    run()
    used = [b - a for a, b in zip(before, os.times())]
    return used[0] + used[1], used[2] + used[3], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--encoded", action="store_true", help="Encoded Datums instead of raw.")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    count = 1000 * args.per_class
    images = images_in(work, count, classes=1000).parent
    whole = work / "whole_train.txt"
    whole.write_text("".join(f"{p} {c}\n" for p, c in tree_list(images, class_folders(images))))
    lists = work / "lists"
    write_splits(whole, "train", lists, reduced=())
    for p in images.rglob("*.JPEG"):  # warm the page cache so both read from memory
        p.read_bytes()
    options = BuildOptions(encoded=args.encoded)
    runs, single = work / "runs", work / "one-pass"

    def ten_runs() -> None:
        for name in HALVES:
            build(lists / name / "files.txt", images, runs / name, options, progress=False)

    def one_pass() -> None:
        build_many([(images, [Dataset(lists / name / "files.txt", single / name) for name in HALVES])], options,
                   progress=False)

    for out in (runs, single):
        shutil.rmtree(out, ignore_errors=True)
    ten = cpu_seconds(ten_runs)
    one = cpu_seconds(one_pass)
    ten_cpu, one_cpu = ten[0] + ten[1], one[0] + one[1]
    written = sum(len((lists / name / "files.txt").read_text().splitlines()) for name in HALVES)
    kind = "encoded" if args.encoded else "raw"
    print(f"{count} JPEGs of 500x375 in 1000 classes, the 10 train halves ({written} {kind} Datums), "
          f"{os.cpu_count()} cores")
    print("CPU s: the writer (this process) + the decoders (its children)")
    for name, (own, children, wall) in (("10 make-lmdb runs", ten), ("one pass", one)):
        print(f"  {name:18} {own:6.1f} + {children:6.1f} = {own + children:6.1f} CPU s  {wall:6.1f} s wall")
    print(f"one pass / 10 runs: {ten_cpu / one_cpu:.2f}x less CPU (goal >= 4x), {ten[2] / one[2]:.2f}x less wall time")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
