#!/usr/bin/env python3
"""Benchmark: images per second that Caffe's own DataLayer delivers from raw and from encoded
Datums, beside the disk each takes, so a user can choose between them.

Generates ImageNet-like JPEGs (default 1,024 of 500x375), builds a raw and an `--encoded` LMDB of
them with make-lmdb (256x256), and times real pycaffe Nets made of one TRAIN Data layer as gen
writes it for CaffeNet (crop 227, mirror, mean file; one prefetch thread, as Caffe has): forward
passes after a warm-up, each a batch decoded (encoded) or copied (raw), cropped, mirrored and
mean-subtracted. Reports images/s, and the bytes per image and per 1.28M images on disk.
Usage: tools/bench_datalayer.py [--count N] [--batch B] [--seconds S] [--workdir DIR]
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

from caffe_transfer.common.caffe_env import pycaffe  # noqa: E402
from caffe_transfer.data.lmdb import BuildOptions, build  # noqa: E402

IMAGENET = 1_281_167


def rate(caffe, lmdb: Path, mean: Path, batch: int, seconds: float, work: Path) -> float:
    """Images/s of forward passes of a net of one Data layer over `lmdb`, for about `seconds`."""
    net_file = work / f"{lmdb.parent.name}.prototxt"
    net_file.write_text(f'''layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ crop_size: 227 mirror: true mean_file: "{mean}" }}
  data_param {{ source: "{lmdb}" batch_size: {batch} backend: LMDB }} }}''')
    net = caffe.Net(str(net_file), caffe.TRAIN)
    for _ in range(2):  # warm-up: the prefetch thread fills its queue
        net.forward()
    passes, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        net.forward()
        passes += 1
    return passes * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_datalayer_"))
    list_file = images_in(work, args.count)
    caffe = pycaffe()
    caffe.set_mode_cpu()
    print(f"{args.count} JPEGs of 500x375 at 256x256; Caffe's DataLayer (TRAIN: crop 227, mirror, mean; one prefetch "
          f"thread), batch {args.batch}, {os.cpu_count()} cores")
    for name, encoded in (("raw", False), ("encoded", True)):
        result = build(list_file, list_file.parent, work / name, BuildOptions(encoded=encoded), progress=False)
        size = (result.lmdb / "data.mdb").stat().st_size
        per_image = size / result.written
        print(f"  {name:8} {rate(caffe, result.lmdb, result.mean, args.batch, args.seconds, work):7.0f} images/s   "
              f"{per_image / 1e3:6.1f} KB per image, {per_image * IMAGENET / 1e9:6.0f} GB for ImageNet's train set")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
