#!/usr/bin/env python3
"""Benchmark: images per second that Caffe's DataLayer delivers, stock loop against the patch's
transform threads, for raw and encoded Datums, beside the disk each takes.

Generates ImageNet-like JPEGs (default 1,024 of 500x375), builds a raw and an `--encoded` LMDB of
them with make-lmdb (256x256), and times real pycaffe Nets made of one TRAIN Data layer as gen
writes it for CaffeNet (crop 227, mirror, mean file): forward passes after the prefetch queue is
drained, each a batch read, decoded (encoded), cropped, mirrored and mean-subtracted. Each
CAFFE_DATA_THREADS in --threads (0 is stock Caffe's loop, which the patch keeps) is timed in
interleaved rounds; the table gives the medians of the rounds, images per second of wall clock
and per CPU-second of the process, and their ratios to stock.
Usage: tools/bench_datalayer.py [--count N] [--batch B] [--seconds S] [--rounds R]
       [--threads 0,1,2,4] [--workdir DIR]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lmdb import images_in  # noqa: E402

from caffe_transfer.common.caffe_env import datalayer_patched, pycaffe  # noqa: E402
from caffe_transfer.data.lmdb import BuildOptions, build  # noqa: E402

IMAGENET = 1_281_167
PREFETCH = 4  # Caffe's data_param.prefetch default: batches queued before the first forward


def rate(caffe, net_file: Path, threads: int, batch: int, seconds: float) -> tuple[float, float]:
    """Images per second of wall clock and per CPU-second (all the process's threads) of forward
    passes of the one-Data-layer net at CAFFE_DATA_THREADS=threads. The second is the work an
    image costs, which a loaded machine changes less than the first."""
    os.environ["CAFFE_DATA_THREADS"] = str(threads)  # read by the DataLayer when the net is made
    net = caffe.Net(str(net_file), caffe.TRAIN)
    for _ in range(PREFETCH + 2):  # drain the queue the prefetch thread filled meanwhile
        net.forward()
    passes, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        net.forward()
        passes += 1
    return passes * batch / (time.perf_counter() - start), passes * batch / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="0,1,2,4", help="CAFFE_DATA_THREADS values; 0 (stock) first")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    if counts[0] != 0:
        parser.error(f"--threads {args.threads}: expected 0 (stock Caffe's loop) first, the ratios' base")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_datalayer_"))
    list_file = images_in(work, args.count)
    caffe = pycaffe()
    caffe.set_mode_cpu()
    print(f"{args.count} JPEGs of 500x375 at 256x256; Caffe's DataLayer (TRAIN: crop 227, mirror, mean), "
          f"batch {args.batch}, {os.cpu_count()} cores, {len(os.sched_getaffinity(0))} usable; "
          f"median of {args.rounds} interleaved rounds of {args.seconds:g} s"
          + ("" if datalayer_patched() else "; this build has no DataLayer patch: every count runs the stock loop"))
    for name, encoded in (("raw", False), ("encoded", True)):
        result = build(list_file, list_file.parent, work / name, BuildOptions(encoded=encoded), progress=False)
        net_file = work / f"{name}.prototxt"
        net_file.write_text(f'''layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ crop_size: 227 mirror: true mean_file: "{result.mean}" }}
  data_param {{ source: "{result.lmdb}" batch_size: {args.batch} backend: LMDB }} }}''')
        rounds = {threads: [] for threads in counts}
        for _ in range(args.rounds):
            for threads in counts:
                rounds[threads].append(rate(caffe, net_file, threads, args.batch, args.seconds))
        per_image = (result.lmdb / "data.mdb").stat().st_size / result.written
        print(f"  {name:8} {per_image / 1e3:6.1f} KB per image, {per_image * IMAGENET / 1e9:4.0f} GB for ImageNet's "
              f"train set")
        stock = [statistics.median(r[i] for r in rounds[0]) for i in (0, 1)]
        for threads in counts:
            wall, cpu = (statistics.median(r[i] for r in rounds[threads]) for i in (0, 1))
            label = "stock loop" if threads == 0 else f"{threads} thread{'s' if threads > 1 else ''}"
            print(f"    {label:11} {wall:7.0f} images/s  {wall / stock[0]:5.2f}x stock   {cpu:7.0f} per CPU-s  "
                  f"{cpu / stock[1]:5.2f}x stock  (rounds, images/s: "
                  f"{', '.join(f'{r[0]:.0f}' for r in rounds[threads])})")
    os.environ.pop("CAFFE_DATA_THREADS")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
