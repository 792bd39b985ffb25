#!/usr/bin/env python3
"""Benchmark: make-lmdb against Caffe's convert_imageset and the decode-and-resize limit.

Generates ImageNet-like JPEGs (default 2,000 of 500x375), then measures in one run, on the same
list: (1) the limit, just decoding and resizing the JPEGs to 256x256 with all cores; (2)
`make-lmdb` raw and (3) `--encoded`; (4) `convert_imageset --resize_height=256 --resize_width=256
--shuffle`. Each is measured in every round, one after the other, so that a slow spell of a shared
machine hits all alike; reported are the median images/s per contender and the median of the
per-round ratios that the project aims at (>= 2x convert_imageset, >= 85% of the limit).
It also reports the CPU each contender used per image, in this process (make-lmdb's writer) and
in its children (the decoders), and from them the most that raw make-lmdb can reach of the limit,
on any number of cores, with its writer as it is and decoders no dearer than the limit's: the
limit's CPU per image over the decoders' plus the writer's (the writer's CPU comes from the same
cores).
Usage: tools/bench_lmdb.py [--count N] [--rounds R] [--workdir DIR]
"""

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from caffe_transfer.common import caffe_env
from caffe_transfer.data.lmdb import (
    BuildOptions,
    build,
    init_decoder,
    load_image,
)


def make_images(root: Path, count: int, classes: int = 10) -> Path:
    """`count` JPEGs of 500x375 in `classes` class folders, and their list."""
    rng = np.random.default_rng(0)
    lines = []
    # Smooth images with some texture compress like photographs (about 100 KB at quality 90).
    base = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    for i in range(count):
        cls = i % classes
        folder = root / f"n{cls:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        small = np.roll(base, i, axis=1) ^ np.uint8(cls * 20 % 256)
        img = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        noise = rng.integers(-12, 12, size=(375, 500, 3))
        arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i:05d}.JPEG", quality=90)
        lines.append(f"n{cls:08d}/img{i:05d}.JPEG {cls}\n")
    list_file = root / "list.txt"
    list_file.write_text("".join(lines))
    return list_file


def images_in(work: Path, count: int, classes: int = 10) -> Path:
    """WORK/images with `count` generated JPEGs (made unless they are there already); its list."""
    images = work / "images"
    list_file = images / "list.txt"
    if not list_file.is_file() or len(list_file.read_text().splitlines()) != count:
        shutil.rmtree(images, ignore_errors=True)
        make_images(images, count, classes)
    return list_file


def _decode(path: str) -> int:
    return load_image(Path(path), 256).size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_lmdb_"))
    list_file = images_in(work, args.count)
    images = list_file.parent
    paths = [str(images / line.split()[0]) for line in list_file.read_text().splitlines()]
    n = len(paths)
    for p in paths:  # warm the page cache so every contender reads from memory
        Path(p).read_bytes()
    cores = os.cpu_count() or 1
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}  # us per image: (this process, its children)

    def timed(name: str, run, out: Path | None = None) -> None:
        if out:  # every contender writes a fresh database
            shutil.rmtree(out, ignore_errors=True)
        before, start = os.times(), time.perf_counter()
        run()
        rates.setdefault(name, []).append(n / (time.perf_counter() - start))
        used = [b - a for a, b in zip(before, os.times())]
        cpu.setdefault(name, []).append(((used[0] + used[1]) / n * 1e6, (used[2] + used[3]) / n * 1e6))

    def limit() -> None:
        with multiprocessing.get_context("fork").Pool(cores, initializer=init_decoder) as pool:
            list(pool.imap(_decode, paths, chunksize=16))

    outs = {name: work / name.replace(" ", "_") for name in ("make-lmdb raw", "make-lmdb --encoded", "convert_imageset")}

    def convert_imageset() -> None:
        subprocess.run([str(caffe_env.tool("convert_imageset")), "--resize_height=256", "--resize_width=256",
                        "--shuffle", "--backend=lmdb", f"{images}/", str(list_file), str(outs["convert_imageset"])],
                       check=True, capture_output=True)

    for _ in range(args.rounds):
        timed("decode+resize limit", limit)
        for name, encoded in (("make-lmdb raw", False), ("make-lmdb --encoded", True)):
            timed(name, lambda: build(list_file, images, outs[name], BuildOptions(encoded=encoded), progress=False),
                  outs[name])
        timed("convert_imageset", convert_imageset, outs["convert_imageset"])

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

    print(f"{n} JPEGs of 500x375, {cores} cores, {args.rounds} rounds (median, then each round)")
    for name, values in rates.items():
        print(f"  {name:22} {statistics.median(values):6.0f} images/s   {' '.join(f'{v:4.0f}' for v in values)}")
    print(f"make-lmdb raw / convert_imageset:       {ratio('make-lmdb raw', 'convert_imageset'):.2f}x (goal >= 2x)")
    print(f"make-lmdb --encoded / convert_imageset: {ratio('make-lmdb --encoded', 'convert_imageset'):.2f}x")
    print(f"make-lmdb raw / decode+resize limit:    {ratio('make-lmdb raw', 'decode+resize limit'):.0%} (goal >= 85%)")
    print("CPU per image (median us): in this process (make-lmdb's writer, the pool's dispatch) + in its children")
    medians = {name: [statistics.median(v[i] for v in values) for i in (0, 1)] for name, values in cpu.items()}
    for name, (own, children) in medians.items():
        print(f"  {name:22} {own:6.0f} + {children:6.0f}")
    pool, writer = medians["decode+resize limit"], medians["make-lmdb raw"][0]
    print(f"raw's writer alone caps it at {sum(pool) / (pool[1] + writer):.0%} of the limit "
          "(the limit's CPU / (the limit's decoders + raw's writer))")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
