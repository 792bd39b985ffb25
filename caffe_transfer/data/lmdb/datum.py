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
HEADER_MAX = 32  # bytes of a raw Datum besides its pixels: at most 16 for the sizes, 11 for any label
_LABEL, _ENCODED, _UINT64 = b"\x28", b"\x38\x01", 0xFFFFFFFFFFFFFFFF  # field 5 (label); field 7 true
_DATA = b"\x2a"  # BlobProto's field 5, packed


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
    so all share it. Each Datum has a cell of `stride` bytes, room for its header whatever its
    label: the writer relabels it there for each LMDB (`relabel_in_place`)."""

    def __init__(self, count: int, shape: tuple[int, int, int], per_slot: int):
        self.shape = shape
        pixels = int(np.prod(shape))
        self.stride = HEADER_MAX + pixels
        self.sum_offset = per_slot * self.stride  # after per_slot cells
        self.size = self.sum_offset + pixels * np.dtype(SUM_DTYPE).itemsize
        self.mem = mmap.mmap(-1, count * self.size)

    def view(self, slot: int, span: Span) -> memoryview:
        start = slot * self.size + span.offset
        return memoryview(self.mem)[start:start + span.length]

    def cell(self, slot: int, span: Span) -> memoryview:
        """The cell of the Datum at `span`: its bytes and the room after them."""
        return self.view(slot, Span(span.offset, self.stride))

    def sum_view(self, slot: int) -> np.ndarray:
        return np.frombuffer(self.mem, SUM_DTYPE, int(np.prod(self.shape)),
                             slot * self.size + self.sum_offset).reshape(self.shape)


def write_mean(path: Path, total: np.ndarray, count: int) -> None:
    """A BlobProto (num=1, C,H,W float) as compute_image_mean writes it. Its packed floats (field
    5, after the sizes) are appended as bytes: caffe_pb2 would take them one Python float at a
    time, 12 ms for a 256x256 mean, as much as writing 50 Datums (a test checks the bytes)."""
    mean = (total / count).astype("<f4")
    c, h, w = mean.shape
    head = caffe_pb2().BlobProto(num=1, channels=c, height=h, width=w).SerializeToString()
    write_atomic(path, b"".join((head, _DATA, _varint(mean.nbytes), mean.tobytes())))


def read_mean(path: str | Path) -> np.ndarray:
    """A mean BlobProto as a float32 C,H,W array."""
    blob = caffe_pb2().BlobProto()
    blob.ParseFromString(Path(path).read_bytes())
    return np.array(blob.data, dtype=np.float32).reshape(blob.channels, blob.height, blob.width)


def _label_field(view: memoryview, old: int) -> tuple[int, bytes]:
    """Where the label field `old` of a Datum as make-lmdb writes it starts, and what follows it.
    The label is the last field of a raw Datum and the last but `encoded` of an encoded one."""
    label = _LABEL + _varint(old & _UINT64)
    for after in (b"", _ENCODED):
        end = len(view) - len(after)
        if view[end - len(label):end] == label and view[end:] == after:
            return end - len(label), after
    raise ValueError(f"not a Datum of label {old} as make-lmdb writes it")


def relabel(datum: bytes | memoryview, old: int, new: int) -> bytes:
    """The same Datum with label `new` instead of `old` (an image in several datasets, labelled in
    each by its own list), as caffe_pb2 serializes it: its label bytes swapped in one copy."""
    view = memoryview(datum)
    start, after = _label_field(view, old)
    return b"".join((view[:start], _LABEL, _varint(new & _UINT64), after))


def relabel_in_place(cell: memoryview, length: int, old: int, new: int) -> int | None:
    """`relabel` without the copy, for a Datum in a slot: its label bytes are swapped where they
    lie, in `cell` (the Datum's first `length` bytes and the room after them, see `Slots.cell`);
    the Datum's new length, or None when the new label does not fit."""
    start, after = _label_field(cell[:length], old)
    replacement = _LABEL + _varint(new & _UINT64) + after
    end = start + len(replacement)
    if end > len(cell):
        return None
    cell[start:end] = replacement
    return end
