"""Datum and mean bytes: what Caffe's DataLayer and `compute_image_mean` read.

Raw Datums of a fixed size are written by hand (`datum_parts`) straight into shared memory
(`Slots`), so that the pixels of an image are copied once, by the process that decodes it; the
bytes are exactly caffe_pb2's (a test checks). Means are BlobProtos as compute_image_mean writes
them.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import NamedTuple

import numpy as np

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.caffe_env import caffe_pb2

SUM_DTYPE = np.uint16  # a chunk's pixel sum: at most 16 x 255 < 2**16 (see workers.CHUNK)
HEADER_MAX = 32  # bytes of a raw Datum besides its pixels: 5 fields, varints of at most 5 bytes
_LABEL, _ENCODED, _UINT64 = b"\x28", b"\x38\x01", 0xFFFFFFFFFFFFFFFF  # field 5 (label); field 7 true


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def datum_parts(c: int, h: int, w: int, label: int) -> tuple[bytes, bytes]:
    """The protobuf wire bytes of a raw Datum before and after its pixel data, field by field as
    caffe_pb2's SerializeToString writes them (channels, height, width, data, label; a test
    checks they are identical), so that pixels can be copied straight into shared memory."""
    head = b"\x08" + _varint(c) + b"\x10" + _varint(h) + b"\x18" + _varint(w) + b"\x22" + _varint(c * h * w)
    return head, _LABEL + _varint(label & _UINT64)


class Span(NamedTuple):
    """Where a Datum lies in its chunk's shared-memory slot."""

    offset: int
    length: int


class Slots:
    """Shared memory for raw Datums of a fixed size: a worker serializes a chunk's Datums, and
    the chunk's pixel sum, into one slot and the parent puts them into the LMDB from there, so the
    196 KB of pixels of a 256x256 image never go through a pipe. Mapped before the workers fork,
    so all share it."""

    def __init__(self, count: int, shape: tuple[int, int, int], per_slot: int):
        self.shape = shape
        pixels = int(np.prod(shape))
        self.sum_offset = per_slot * (HEADER_MAX + pixels)  # after per_slot records of at most that
        self.size = self.sum_offset + pixels * np.dtype(SUM_DTYPE).itemsize
        self.mem = mmap.mmap(-1, count * self.size)

    def view(self, slot: int, span: Span) -> memoryview:
        start = slot * self.size + span.offset
        return memoryview(self.mem)[start:start + span.length]

    def sum_view(self, slot: int) -> np.ndarray:
        return np.frombuffer(self.mem, SUM_DTYPE, int(np.prod(self.shape)),
                             slot * self.size + self.sum_offset).reshape(self.shape)


def write_mean(path: Path, total: np.ndarray, count: int) -> None:
    """A BlobProto (num=1, C,H,W float) as compute_image_mean writes it."""
    mean = (total / count).astype(np.float32)
    c, h, w = mean.shape
    blob = caffe_pb2().BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.ravel().tolist())
    write_atomic(path, blob.SerializeToString())


def read_mean(path: str | Path) -> np.ndarray:
    """A mean BlobProto as a float32 C,H,W array."""
    blob = caffe_pb2().BlobProto()
    blob.ParseFromString(Path(path).read_bytes())
    return np.array(blob.data, dtype=np.float32).reshape(blob.channels, blob.height, blob.width)


def relabel(datum: bytes | memoryview, old: int, new: int) -> bytes:
    """The same Datum with label `new` instead of `old` (an image in several datasets, labelled in
    each by its own list), as caffe_pb2 serializes it. The label is the last field of a raw Datum
    and the last but `encoded` of an encoded one: its bytes are swapped in one copy."""
    label, replacement = _LABEL + _varint(old & _UINT64), _LABEL + _varint(new & _UINT64)
    view = memoryview(datum)
    for after in (b"", _ENCODED):
        end = len(view) - len(after)
        if view[end - len(label):end] == label and view[end:] == after:
            return b"".join((view[:end - len(label)], replacement, after))
    raise ValueError(f"not a Datum of label {old} as make-lmdb writes it")
