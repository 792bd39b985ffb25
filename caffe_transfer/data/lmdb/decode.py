"""Images to Datums, as convert_imageset makes them: one chunk of a list at a time, in a worker.

Images are decoded and resized by OpenCV as convert_imageset does, so the pixels are Caffe's own;
`encoded` Datums hold JPEG bytes (the original file where no resize is needed), which Caffe
decodes with OpenCV. A chunk's pixels are summed exactly (uint16) for the mean, so that the sum
travels once per chunk, not once per image.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Union

import cv2
import numpy as np

from caffe_transfer.common.caffe_env import caffe_pb2
from caffe_transfer.data.lmdb.datum import SUM_DTYPE, Slots, Span, datum_parts

DEFAULT_SIZE = 256
DEFAULT_SEED = 0
JPEG_QUALITY = 95  # what OpenCV's imencode (convert_imageset --encoded) uses
_JPEG = b"\xff\xd8\xff"


@dataclass(frozen=True)
class BuildOptions:
    resize: int = DEFAULT_SIZE  # 0: keep each image's size
    shuffle: bool = True
    seed: int = DEFAULT_SEED
    encoded: bool = False
    workers: int | None = None  # None: all cores
    gray: bool = False

    @property
    def raw_shape(self) -> tuple[int, int, int] | None:
        """C,H,W of every Datum when all are raw of one size; None when sizes vary (encoded, or
        --resize 0)."""
        if self.encoded or not self.resize:
            return None
        return (1 if self.gray else 3), self.resize, self.resize


class Item(NamedTuple):
    """An image to convert: its position in the build's order, its path and the label its Datum
    gets (the writer relabels it for the other datasets that hold it)."""

    position: int
    path: str
    label: int


class Written(NamedTuple):
    """A converted image: its position, its Datum's bytes (or where they lie in the chunk's slot),
    and what a decoder printed about it."""

    position: int
    path: str
    payload: bytes | Span
    warning: str


class Skipped(NamedTuple):
    """An image that could not be converted, and why."""

    position: int
    path: str
    reason: str


Record = Union[Written, Skipped]


class ChunkResult(NamedTuple):
    """A converted chunk: the position of its last image, its records, and the exact sum of its
    pixels, which is either `total` or, with shared memory, in the chunk's slot (`sum_in_slot`);
    `mixed` when its images have different sizes (then there is no sum)."""

    last: int
    records: list[Record]
    total: np.ndarray | None
    sum_in_slot: bool
    mixed: bool


def init_decoder() -> None:
    """Set up a process that decodes images one after the other: one OpenCV thread (the pool is
    the parallelism), and freed memory kept for the next image (`keep_freed_heap`: 6% of a
    worker's time)."""
    cv2.setNumThreads(1)
    keep_freed_heap()


def keep_freed_heap() -> None:
    """Keep freed memory in this process's heap for the next buffer of its size. By default glibc
    hands each freed buffer of over 128 KB back to the kernel and faults it in again page by page
    on the next use: a decoder's megabyte per image, and the writer's 196 KB per raw Datum (LMDB
    mallocs each value's pages and frees them at commit), a fifth of the writer's CPU. Lasts for
    the life of the process; up to 128 MB of freed heap stays."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)   # M_MMAP_THRESHOLD: buffers from the heap, not mmap
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: keep that much freed heap
    except (AttributeError, OSError):
        pass  # not glibc: its defaults stay


def load_image(path: Path, resize: int, gray: bool = False) -> np.ndarray:
    """An image as convert_imageset reads it: uint8 H,W,C in BGR order (or H,W,1 grey), decoded by
    OpenCV and resized by cv::resize's default (bilinear) to resize x resize, so the pixels are
    Caffe's own (a test compares them with convert_imageset's)."""
    return _pixels(path.read_bytes(), resize, gray)


def _pixels(data: bytes, resize: int, gray: bool) -> np.ndarray:
    # OpenCV decodes a truncated JPEG with a warning; a JPEG is complete if its end-of-image
    # marker follows its last start-of-scan (an EXIF thumbnail has both, earlier)
    if data[:3] == _JPEG and ((end := data.rfind(b"\xff\xd9")) < 0 or data.find(b"\xff\xda", end) >= 0):
        raise ValueError("truncated JPEG: no end-of-image marker after the last scan")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not an image OpenCV can decode")
    if resize:
        img = cv2.resize(img, (resize, resize))
    return img[:, :, None] if img.ndim == 2 else img


def encode_image(data: bytes, pixels: np.ndarray, resize: int) -> tuple[bytes, bool]:
    """JPEG bytes of the stored image, and whether they were re-encoded: as convert_imageset
    --encoded, the original file is kept where it is a JPEG and no resize was asked for."""
    if not resize and data[:3] == _JPEG:
        return data, False
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("OpenCV cannot encode it as JPEG")
    return buf.tobytes(), True


@dataclass
class Converter:
    """What a worker process converts with: the image root, the options, the shared memory (raw
    Datums of a fixed size; None otherwise), and how much of its stderr it has read. Each process
    has its own, made after the fork."""

    root: Path
    options: BuildOptions
    slots: Slots | None
    stderr_read: int = field(default=0)

    def one(self, item: Item, slot: int, offset: int) -> tuple[bytes | Span, np.ndarray]:
        """One image -> (serialized Datum or its span in the slot, pixels C,H,W)."""
        options = self.options
        data = (self.root / item.path).read_bytes()
        pixels = _pixels(data, options.resize, options.gray)
        h, w, c = pixels.shape
        if self.slots is not None:  # resized, so of the slots' fixed shape
            head, tail = datum_parts(c, h, w, item.label)
            span = Span(offset, len(head) + h * w * c + len(tail))
            out = self.slots.view(slot, span)
            out[:len(head)] = head
            chw = np.frombuffer(out[len(head):len(head) + h * w * c], dtype=np.uint8).reshape(c, h, w)
            cv2.split(pixels, list(chw))  # H,W,C to C,H,W in place, 5x faster than numpy's copy
            out[len(out) - len(tail):] = tail
            return span, chw
        datum = caffe_pb2().Datum(label=item.label)
        if options.encoded:  # no sizes, as convert_imageset: Caffe takes them from the JPEG
            datum.data, reencoded = encode_image(data, pixels, options.resize)
            datum.encoded = True
            if reencoded:  # the mean is of what Caffe will decode
                pixels = _pixels(datum.data, 0, options.gray)
        chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        if not options.encoded:
            datum.channels, datum.height, datum.width = c, h, w
            datum.data = chw.tobytes()
        return datum.SerializeToString(), chw

    def new_stderr(self) -> str:
        """What this process's stderr (a file, see `workers`) got since the last call, on one
        line: the warnings a decoder printed about the image just converted."""
        end = os.lseek(2, 0, os.SEEK_CUR)
        if end == self.stderr_read:
            return ""
        text = os.pread(2, end - self.stderr_read, self.stderr_read).decode(errors="replace")
        self.stderr_read = end
        return " ".join(text.split())

    def chunk(self, items: list[Item], slot: int) -> ChunkResult:
        """A chunk of images -> its records and the exact sum of its pixels (in the slot with
        shared memory)."""
        records: list[Record] = []
        total, mixed, offset = None, False, 0
        for item in items:
            try:
                payload, chw = self.one(item, slot, offset)
            except Exception as e:  # noqa: BLE001 - any unreadable image is skipped and reported
                warning = self.new_stderr()
                reason = f"{type(e).__name__}: {e}".replace("\n", " ") + (f" ({warning})" if warning else "")
                records.append(Skipped(item.position, item.path, reason))
                continue
            records.append(Written(item.position, item.path, payload, self.new_stderr()))
            if isinstance(payload, Span):
                offset += self.slots.stride
            if total is None and not mixed:
                total = self.slots.sum_view(slot) if self.slots is not None else np.empty(chw.shape, SUM_DTYPE)
                total[...] = 0
            if total is not None and chw.shape == total.shape:
                total += chw
            else:
                mixed, total = True, None
        in_slot = self.slots is not None and total is not None
        return ChunkResult(items[-1].position, records, None if in_slot else total, in_slot, mixed)
