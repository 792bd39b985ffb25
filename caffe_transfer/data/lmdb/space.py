"""The disk a build needs, said before it starts, raw and with --encoded, and a refusal when the
disk is short.

Raw Datums of a fixed size take the same pages each; encoded ones (and raw ones of unresized
images) are estimated from a sample of each pass's images, converted as the build converts them.
What a half-built LMDB already holds, or has reserved (`reservation`), is counted as written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.lmdb.datum import HEADER_MAX
from caffe_transfer.data.lmdb.decode import BuildOptions, Converter, Item
from caffe_transfer.data.lmdb.target import Target
from caffe_transfer.data.lmdb.writer import datum_key, footprint

SAMPLE = 24  # images converted per pass to estimate the bytes per image


@dataclass(frozen=True)
class Need:
    """One dataset's LMDB: its images, and the bytes it takes raw and encoded, and has already."""

    out_dir: Path
    images: int
    raw: int
    encoded: int
    present: int


def _per_image(root: Path, paths: list[str], options: BuildOptions) -> tuple[float, float]:
    """Mean map bytes of one image's record, raw and encoded, over a sample of `paths`."""
    step = max(1, len(paths) // SAMPLE)
    sample = paths[::step][:SAMPLE]
    sizes = []
    for encoded in (False, True):
        converter = Converter(root, replace(options, encoded=encoded), None)
        bytes_ = []
        for path in sample:
            try:
                payload, _ = converter.one(Item(0, path, 0), 0, 0)
            except Exception:  # noqa: BLE001 - an unreadable image is the build's to report
                continue
            bytes_.append(footprint(datum_key(0, path), len(payload)))
        sizes.append(sum(bytes_) / len(bytes_) if bytes_ else 0.0)
    return sizes[0], sizes[1]


def estimate(todo: list[tuple[Path, list[Target]]], options: BuildOptions) -> list[Need]:
    """What each dataset to build needs."""
    needs = []
    for root, targets in todo:
        paths = sorted({path for t in targets for path, _ in t.entries})
        raw, encoded = _per_image(root, paths, options)
        for t in targets:
            data = t.partial / "data.mdb"
            needs.append(Need(t.out_dir, len(t.entries), int(raw * len(t.entries)), int(encoded * len(t.entries)),
                              data.stat().st_blocks * 512 if data.is_file() else 0))
    return needs


def reservation(target: Target, options: BuildOptions) -> int:
    """Bytes to reserve on disk for `target`'s LMDB before it is written (`Target.reserve`):
    every record's pages when its Datums are raw of one size, nothing when sizes vary (encoded,
    or --resize 0), which are taken as they are written."""
    shape = options.raw_shape
    if not shape:
        return 0
    length = HEADER_MAX + shape[0] * shape[1] * shape[2]
    return sum(footprint(datum_key(n, path), length) for n, (path, _) in enumerate(target.entries))


def gb(size: float) -> str:
    return f"{size / 1e9:,.2f} GB" if size >= 1e8 else f"{size / 1e6:,.1f} MB"


def describe(needs: list[Need], options: BuildOptions) -> list[str]:
    """The plan as lines: each dataset, then the totals and what is free where they go."""
    lines = [f"{n.out_dir.name:24} {n.images:>10,} images   raw {gb(n.raw):>10}   encoded ~{gb(n.encoded):>10}"
             for n in needs]
    lines.append(f"{'all':24} {sum(n.images for n in needs):>10,} images   raw {gb(sum(n.raw for n in needs)):>10}   "
                 f"encoded ~{gb(sum(n.encoded for n in needs)):>10}   (building {'encoded' if options.encoded else 'raw'})")
    for where, (need, free) in _by_disk(needs, options).items():
        lines.append(f"needs {gb(need)} more on the disk of {where}, which has {gb(free)} free")
    return lines


def _by_disk(needs: list[Need], options: BuildOptions) -> dict[Path, tuple[int, int]]:
    """Per file system (named by its first folder): bytes still to write, and bytes free."""
    out: dict[int, tuple[Path, int, int]] = {}
    for n in needs:
        folder = n.out_dir.parent  # named by where the datasets go
        while not folder.exists():
            folder = folder.parent
        stat = os.statvfs(folder)
        device = os.stat(folder).st_dev
        where, need, free = out.get(device, (folder, 0, stat.f_bavail * stat.f_frsize))
        out[device] = (where, need + max(0, (n.encoded if options.encoded else n.raw) - n.present), free)
    return {where: (need, free) for where, need, free in out.values()}


def check(needs: list[Need], options: BuildOptions) -> None:
    """Refuse, on one line, a build that the disk cannot hold."""
    for where, (need, free) in _by_disk(needs, options).items():
        if need > free:
            encoded = "" if options.encoded else (
                f"; --encoded would need about {gb(sum(n.encoded - n.present for n in needs if n.present < n.encoded))}")
            raise CaffeTransferError(f"the LMDBs need {gb(need)} more on the disk of {where}, which has {gb(free)} "
                                     f"free{encoded}: free space, or build fewer experiments")
