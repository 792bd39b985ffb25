"""Class-filtered, relabelled, resized LMDBs and their mean images, as Caffe's tools make them.

One LMDB per list file, with what `convert_imageset` would write: Datums (uint8, C,H,W, BGR,
the list's label) keyed `%08d_<path>` by position in the (by default shuffled, fixed-seed) list,
images decoded and resized to 256x256 by OpenCV as convert_imageset does, so the pixels are the
same (`--resize 0` keeps their size); `encoded=True` stores JPEG bytes instead (the original file
where no resize is needed), which Caffe decodes with OpenCV. The mean image is written as
`compute_image_mean` would, from a float64 sum so that 1.28M images lose no precision.

Decoding and resizing run in worker processes on all cores (see `_Workers`); the parent writes
in list order, one LMDB transaction per batch, and keeps its progress (next position, the float64
pixel sum, the skipped images) in a named sub-database of the same LMDB, committed in the same
transaction. A process killed at any point and run again therefore continues from the last
committed batch and ends with every image exactly once. Finished, the state sub-database is dropped (Caffe reads the
main database only), the LMDB is renamed from `lmdb.partial` to `lmdb`, and `COMPLETE` is written;
a complete LMDB is never rebuilt unless forced. Unreadable images are skipped, counted and listed in
`skipped.txt`; images written although a decoder warned about them (libjpeg's "Corrupt JPEG data",
which convert_imageset prints without naming the file) are listed in `warnings.txt`.

Output layout (what `gen` reads): OUT_DIR/lmdb, OUT_DIR/mean.binaryproto, OUT_DIR/skipped.txt,
OUT_DIR/warnings.txt, OUT_DIR/COMPLETE.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import mmap
import multiprocessing
import multiprocessing.connection
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import lmdb
import numpy as np

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.caffe_env import caffe_pb2
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.splits import read_list

DEFAULT_SIZE = 256
DEFAULT_SEED = 0
BATCH = 256  # images per LMDB transaction (and per progress record)
CHUNK = 16   # images per worker task
AHEAD_MIN = 3  # chunks a worker may run ahead of the parent: one in hand, one done, one spare
SUM_DTYPE = np.uint16  # a chunk's pixel sum: at most CHUNK x 255 < 2**16
IN_SLOT = "in slot"  # a chunk's result whose pixel sum is in its shared-memory slot
STATE_DB = b"caffe-transfer-progress"
INITIAL_MAP_SIZE = 1 << 30  # grown, by doubling, between transactions
JPEG_QUALITY = 95  # what OpenCV's imencode (convert_imageset --encoded) uses
STUCK_SECONDS = 300.0  # a worker longer on one chunk, or a process on one image, is taken as stuck


@dataclass(frozen=True)
class BuildOptions:
    resize: int = DEFAULT_SIZE  # 0: keep each image's size
    shuffle: bool = True
    seed: int = DEFAULT_SEED
    encoded: bool = False
    workers: int | None = None  # None: all cores
    gray: bool = False


@dataclass
class BuildResult:
    lmdb: Path
    mean: Path | None
    written: int
    skipped: int
    seconds: float
    already_complete: bool = False
    warned: int = 0


def order(count: int, shuffle: bool, seed: int) -> np.ndarray:
    """The list positions in database order (a fixed-seed permutation, or the list order)."""
    return np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)


# --- worker side -------------------------------------------------------------------------------
_ROOT: Path | None = None
_OPTIONS: BuildOptions | None = None
_SLOTS: _Slots | None = None


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


def _init_worker(root: Path, options: BuildOptions, slots: _Slots | None) -> None:
    global _ROOT, _OPTIONS, _SLOTS
    _ROOT, _OPTIONS, _SLOTS = root, options, slots
    init_decoder()


class _Slots:
    """Shared memory for raw Datums of a fixed size: a worker serializes a chunk's Datums, and
    the chunk's pixel sum, into one slot and the parent puts them into the LMDB from there, so the
    196 KB of pixels of a 256x256 image never go through a pipe. Mapped before the workers fork,
    so all share it."""

    def __init__(self, count: int, shape: tuple[int, int, int]):
        self.shape = shape
        self.sum_offset = CHUNK * (_HEADER_MAX + int(np.prod(shape)))  # after CHUNK records of at most that
        self.size = self.sum_offset + int(np.prod(shape)) * np.dtype(SUM_DTYPE).itemsize
        self.mem = mmap.mmap(-1, count * self.size)

    @classmethod
    def for_options(cls, options: BuildOptions, count: int) -> _Slots | None:
        if options.encoded or not options.resize:
            return None  # sizes vary: pickled bytes instead
        channels = 1 if options.gray else 3
        return cls(count, (channels, options.resize, options.resize))

    def view(self, slot: int, offset: int, length: int) -> memoryview:
        start = slot * self.size + offset
        return memoryview(self.mem)[start:start + length]

    def sum_view(self, slot: int) -> np.ndarray:
        return np.frombuffer(self.mem, SUM_DTYPE, int(np.prod(self.shape)),
                             slot * self.size + self.sum_offset).reshape(self.shape)


_HEADER_MAX = 32  # bytes of a raw Datum besides its pixels: 5 fields, varints of at most 5 bytes


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
    return head, b"\x28" + _varint(label & 0xFFFFFFFFFFFFFFFF)


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


_JPEG = b"\xff\xd8\xff"


def encode_image(data: bytes, pixels: np.ndarray, resize: int) -> tuple[bytes, bool]:
    """JPEG bytes of the stored image, and whether they were re-encoded: as convert_imageset
    --encoded, the original file is kept where it is a JPEG and no resize was asked for."""
    if not resize and data[:3] == _JPEG:
        return data, False
    ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("OpenCV cannot encode it as JPEG")
    return buf.tobytes(), True


def _convert_one(position: int, rel: str, label: int, slot: int, offset: int):
    """One image -> (key, serialized Datum or its (offset, length) in the slot, pixels C,H,W)."""
    data = (_ROOT / rel).read_bytes()
    pixels = _pixels(data, _OPTIONS.resize, _OPTIONS.gray)
    h, w, c = pixels.shape
    key = f"{position:08d}_{rel}".encode()
    if _SLOTS is not None:  # resized, so of the slots' fixed shape
        head, tail = datum_parts(c, h, w, label)
        out = _SLOTS.view(slot, offset, len(head) + h * w * c + len(tail))
        out[:len(head)] = head
        chw = np.frombuffer(out[len(head):len(head) + h * w * c], dtype=np.uint8).reshape(c, h, w)
        cv2.split(pixels, list(chw))  # H,W,C to C,H,W in place, 5x faster than numpy's copy
        out[len(out) - len(tail):] = tail
        return key, (offset, len(out)), chw
    datum = caffe_pb2().Datum(label=label)
    if _OPTIONS.encoded:  # no sizes, as convert_imageset: Caffe takes them from the JPEG
        datum.data, reencoded = encode_image(data, pixels, _OPTIONS.resize)
        datum.encoded = True
        if reencoded:  # the mean is of what Caffe will decode
            pixels = _pixels(datum.data, 0, _OPTIONS.gray)
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    if not _OPTIONS.encoded:
        datum.channels, datum.height, datum.width = c, h, w
        datum.data = chw.tobytes()
    return key, datum.SerializeToString(), chw


_STDERR_READ = 0  # how much of this worker's stderr file has been read


def _new_stderr() -> str:
    """What this worker's stderr (a file, see `_Workers`) got since the last call, on one line:
    the warnings a decoder printed about the image just converted."""
    global _STDERR_READ
    end = os.lseek(2, 0, os.SEEK_CUR)
    if end == _STDERR_READ:
        return ""
    text = os.pread(2, end - _STDERR_READ, _STDERR_READ).decode(errors="replace")
    _STDERR_READ = end
    return " ".join(text.split())


def _convert_chunk(chunk: list[tuple[int, str, int]], slot: int):
    """A chunk of (position, path, label) -> its records and the exact sum of its pixels.

    Records are (path, key, Datum bytes or their (offset, length) in shared-memory slot `slot`,
    decoder warnings), or (path, None, reason, "") for an unreadable image. The sum travels once
    per chunk, not once per image, so the parent only writes; with shared memory it stays in the
    slot (returned as `IN_SLOT`)."""
    records, total, mixed, offset = [], None, False, 0
    for position, rel, label in chunk:
        try:
            key, payload, chw = _convert_one(position, rel, label, slot, offset)
        except Exception as e:  # noqa: BLE001 - any unreadable image is skipped and reported
            warning = _new_stderr()
            reason = f"{type(e).__name__}: {e}".replace("\n", " ") + (f" ({warning})" if warning else "")
            records.append((rel, None, reason, ""))
            continue
        records.append((rel, key, payload, _new_stderr()))
        if isinstance(payload, tuple):
            offset += payload[1]
        if total is None and not mixed:
            total = _SLOTS.sum_view(slot) if _SLOTS is not None else np.empty(chw.shape, SUM_DTYPE)
            total[...] = 0
        if total is not None and chw.shape == total.shape:
            total += chw
        else:
            mixed, total = True, None
    if _SLOTS is not None and total is not None:
        total = IN_SLOT
    return chunk[-1][0], records, total, mixed


def _work(w: int, ahead: int, chunks: list, claims, busy, root: Path, options: BuildOptions, slots: _Slots | None,
          conn, close: list, stderr: int) -> None:
    """Worker `w`: claim the next chunk, convert it into the next of its `ahead` slots, send the
    result on its own pipe; before reusing a slot, wait until the parent is done with it. While
    converting, busy[w] holds when it began."""
    _start_child(close, stderr, root, options, slots)
    try:
        for j in itertools.count():
            if j >= ahead:
                conn.recv()
            with claims.get_lock():  # claims[-1]: the next chunk; claims[w]: this worker's chunk
                index = claims[w] = claims[-1]
                claims[-1] += 1
            if index >= len(chunks):
                break
            slot = w * ahead + j % ahead
            busy[w] = time.monotonic()
            result = _convert_chunk(chunks[index], slot)
            busy[w] = 0.0
            conn.send((index, slot, result))
        conn.send(None)  # finished, as opposed to dead
    except (EOFError, ConnectionError, KeyboardInterrupt):
        pass  # the parent is gone, or interrupted: nothing left to hand back


def _alone(item: tuple[int, str, int], root: Path, options: BuildOptions, conn, close: list, stderr: int) -> None:
    """Convert one image in a process of its own (see `_Workers.isolated`), without shared memory."""
    _start_child(close, stderr, root, options, None)
    conn.send(_convert_chunk([item], 0))


def _start_child(close: list, stderr: int, root: Path, options: BuildOptions, slots: _Slots | None) -> None:
    """Close the parent's pipe ends inherited by fork (so that a dead parent ends a child's recv,
    and a dead child the parent's), make `stderr` the child's fd 2, and set up the decoder."""
    for conn in close:
        conn.close()
    os.dup2(stderr, 2)
    _init_worker(root, options, slots)


# --- parent side -------------------------------------------------------------------------------
class _State:
    """Progress kept inside the LMDB: next position, pixel sum (float64), count, skipped images,
    images written with decoder warnings, and whether images of different sizes (no single mean)
    were seen."""

    def __init__(self, env: lmdb.Environment):
        self.db = env.open_db(STATE_DB)
        self.next, self.count, self.sum, self.skipped, self.warned, self.mixed = 0, 0, None, [], [], False
        self.listed_bytes = 0
        with env.begin(db=self.db) as txn:
            raw = txn.get(b"state")
            if raw:
                meta = json.loads(raw)
                self.next, self.count, self.skipped = meta["next"], meta["count"], meta["skipped"]
                self.warned = meta["warned"]
                self.mixed = meta["mixed"]
                self.listed_bytes = len(json.dumps(self.skipped)) + len(json.dumps(self.warned))
                total = txn.get(b"sum")
                if total and meta["shape"]:
                    self.sum = np.frombuffer(total, dtype=np.float64).reshape(meta["shape"]).copy()

    def note(self, listing: list, rel: str, text: str) -> None:
        """Note an image in `skipped` or `warned`."""
        listing.append([rel, text])
        self.listed_bytes += len(json.dumps(listing[-1])) + 2  # as it is in the saved list

    def add(self, total: np.ndarray | None, mixed: bool) -> None:
        """Fold in a chunk's pixel sum."""
        if self.mixed or total is None:
            self.mixed = self.mixed or mixed
            return
        if self.sum is None:
            self.sum = np.zeros(total.shape, dtype=np.float64)
        if mixed or total.shape != self.sum.shape:
            self.mixed, self.sum = True, None
            return
        self.sum += total

    def footprint(self, total: np.ndarray | None) -> int:
        """Map bytes a save may add once `total` is folded in (the old sum's pages are only free
        again after the commit)."""
        pixels = self.sum.size if self.sum is not None else total.size if total is not None else 0
        return 2 * 8 * pixels + 16 * _PAGE + 2 * self.listed_bytes

    def save(self, txn) -> None:
        meta = {"next": self.next, "count": self.count, "skipped": self.skipped, "warned": self.warned,
                "mixed": self.mixed,
                "shape": list(self.sum.shape) if self.sum is not None else None}
        txn.put(b"state", json.dumps(meta).encode(), db=self.db)
        if self.sum is not None:
            txn.put(b"sum", self.sum.tobytes(), db=self.db)


class _Flusher:
    """Writes committed pages to disk in the background and drops them from the page cache.

    Otherwise the page cache grows by the whole LMDB, and each new page is memory the kernel must
    find and clear; on a virtual machine that hands free memory back to its host, that costs the
    writer more CPU than copying the pixels. Dropped once on disk, a batch's pages are soon reused
    for the next one. Nothing is lost to a kill (the OS holds what is not yet written), and the
    final sync still comes at the end."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)
        self.wake, self.stopping = threading.Event(), False
        self.thread = threading.Thread(target=self._run, name="lmdb-flusher", daemon=True)
        self.thread.start()

    def poke(self) -> None:
        self.wake.set()

    def _run(self) -> None:
        while not self.stopping:
            self.wake.wait()
            self.wake.clear()
            os.fdatasync(self.fd)
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join()
        os.close(self.fd)


class _Workers:
    """Worker processes converting chunks, whose results come back in list order.

    The chunk list is inherited by fork and each worker claims the next chunk from a shared
    counter, so no task travels and the parent runs no pool threads: it only writes. A worker may
    run `ahead` chunks ahead of the parent (its `ahead` shared-memory slots), enough to keep it
    busy while the parent commits a batch. A worker's stderr is a file, read after each image, so
    that what a decoder prints (libjpeg's warnings, or its last words) is tied to its image.

    Each worker has its own pipe, so a worker that dies (the OOM killer, or a decoder that
    crashes on one bad file) is seen here, where multiprocessing.Pool would wait forever; one
    stuck on a chunk for STUCK_SECONDS (a decoder in an endless loop) is killed. Its chunk is then
    converted again one image per process (`isolated`): an image whose process dies or sticks too
    is skipped and reported like any unreadable one, the others are written, and a new worker
    takes the dead one's place once its slots are free. Only when every image of the chunk, and
    an image that converted before, kill their processes is it not the images: an error."""

    def __init__(self, chunks: list, workers: int, ahead: int, root: Path, options: BuildOptions,
                 slots: _Slots | None, control: tuple[int, str, int] | None):
        self.chunks, self.ahead, self.root, self.options, self.slots = chunks, ahead, root, options, slots
        self.control = control  # an image known not to kill its process
        self.ctx = multiprocessing.get_context("fork")
        self.claims = self.ctx.Array("q", [-1] * workers + [0])
        self.busy = self.ctx.RawArray("d", workers)  # when each worker began its chunk, or 0
        self.stuck: set = set()  # workers killed for being stuck
        self.conns: list = [None] * workers
        self.procs: list = [None] * workers
        self.stderr: list = [None] * workers
        for w in range(workers):
            self._start(w)

    def _fork(self, target, name: str, *args):
        """Start `target(*args, conn, close, stderr)` in a forked child: (the process, the parent's
        end of its pipe, the file that is its stderr)."""
        parent_end, child_end = self.ctx.Pipe()
        stderr = tempfile.TemporaryFile()
        close = [conn for conn in self.conns if conn is not None] + [parent_end]
        proc = self.ctx.Process(target=target, name=name, daemon=True,
                                args=(*args, child_end, close, stderr.fileno()))
        try:
            proc.start()
        except BaseException:
            parent_end.close()
            stderr.close()
            raise
        finally:
            child_end.close()
        return proc, parent_end, stderr

    def _start(self, w: int) -> None:
        self.busy[w] = 0.0
        self.stuck.discard(w)
        started = self._fork(_work, f"make-lmdb-{w}", w, self.ahead, self.chunks, self.claims, self.busy, self.root,
                             self.options, self.slots)
        if self.stderr[w] is not None:
            self.stderr[w].close()
        self.procs[w], self.conns[w], self.stderr[w] = started

    def results(self):
        """(slot, result) of each chunk in list order, or (None, result) of each image of a chunk
        converted one by one. A chunk's slot is free again once the next result is asked for."""
        pending: dict = {}  # index -> (worker, slot, result), received ahead of its turn
        lost: dict = {}  # index -> (worker, how it died) of a chunk whose worker died converting it
        dead: dict = {}  # worker -> the index of the chunk it died on, or None
        owed = [0] * len(self.conns)  # results a worker sent that were not yet handed on
        live = {conn: w for w, conn in enumerate(self.conns)}
        for index in range(len(self.chunks)):
            while index not in pending and index not in lost:
                for w, k in list(dead.items()):  # all its slots free again: a new worker for it
                    if not owed[w] and k not in lost:
                        del dead[w]
                        self._start(w)
                        live[self.conns[w]] = w
                for conn in multiprocessing.connection.wait(list(live), timeout=STUCK_SECONDS / 10):
                    w = live[conn]
                    try:
                        message = conn.recv()
                    except (EOFError, ConnectionError):
                        del live[conn]
                        self.procs[w].join()
                        k = self.claims[w]
                        dead[w] = k if index <= k < len(self.chunks) and k not in pending else None
                        if dead[w] is not None:
                            lost[k] = (w, self._death(self.procs[w], self.stderr[w], w in self.stuck))
                        continue
                    if message is None:
                        del live[conn]
                    else:
                        pending[message[0]] = (w, *message[1:])
                        owed[w] += 1
                now = time.monotonic()
                for w in live.values():
                    if self.busy[w] and now - self.busy[w] > STUCK_SECONDS and w not in self.stuck:
                        self.stuck.add(w)
                        self.procs[w].kill()  # its EOF comes next: then it is a dead worker
            if index in lost:
                yield from ((None, result) for result in self.isolated(index, *lost.pop(index)))
                continue
            w, slot, result = pending.pop(index)
            if self.control is None:
                self.control = next((item for item, (_, key, _, _) in zip(self.chunks[index], result[1]) if key),
                                    None)
            yield slot, result
            owed[w] -= 1
            try:
                self.conns[w].send(None)  # the slot is free
            except ConnectionError:
                pass  # finished, or died: then its next result says so

    def isolated(self, index: int, w: int, death: str) -> list:
        """The results of chunk `index`, whose worker died, converted one image per process."""
        chunk = self.chunks[index]
        alone = [self._alone(item) for item in chunk]
        if all(result is None for result, _ in alone) and (self.control is None or
                                                           self._alone(self.control)[0] is None):
            raise CaffeTransferError(
                f"make-lmdb worker {w} died ({death}) converting the {len(chunk)} images from {chunk[0][1]} on, "
                "and so did a process for each of them alone, and "
                + (f"one for {self.control[1]}, which converted before: not the images' fault" if self.control
                   else "no image has converted yet to compare with")
                + "; what was written is kept, run again to go on")
        return [result or (item[0], [(item[1], None, f"the decoder died on it ({how})", "")], None, False)
                for item, (result, how) in zip(chunk, alone)]

    def _alone(self, item: tuple[int, str, int]) -> tuple[tuple | None, str]:
        """`_convert_chunk([item])` in a process of its own: its result, or None and how it died."""
        proc, parent_end, stderr = self._fork(_alone, "make-lmdb-alone", item, self.root, self.options)
        with stderr:
            try:
                stuck = not parent_end.poll(STUCK_SECONDS)
                result = None if stuck else parent_end.recv()
            except EOFError:
                result = None
            finally:
                parent_end.close()
            if stuck:
                proc.kill()
            proc.join()
            return result, "" if result else self._death(proc, stderr, stuck)

    @staticmethod
    def _death(proc, stderr, stuck: bool) -> str:
        """How a dead process ended (its exit code, or stuck and killed), and its last line on stderr."""
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 4096))
        last = [line for line in stderr.read().decode(errors="replace").splitlines() if line.strip()][-1:]
        return ((f"stuck for more than {STUCK_SECONDS:g} s, killed" if stuck else f"exit code {proc.exitcode}")
                + "".join(f", last words: {line.strip()}" for line in last))

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc) -> None:
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            if proc.is_alive() and exc[0] is not None:
                proc.terminate()  # interrupted, or failed: its work is not wanted
            proc.join()
        for stderr in self.stderr:
            stderr.close()


def _room(env: lmdb.Environment) -> int:
    """Bytes the map can still take (outside a write transaction)."""
    info = env.info()
    return info["map_size"] - (info["last_pgno"] + 1) * env.stat()["psize"]


def _footprint(key: bytes, value) -> int:
    """An upper bound on the map bytes one record takes: its value's overflow pages plus its key
    and node in a leaf page, and a share of the branch pages above."""
    return (len(value) // _PAGE + 2) * _PAGE + 2 * len(key) + 64


_PAGE = 4096


def write_mean(path: Path, total: np.ndarray, count: int) -> None:
    """A BlobProto (num=1, C,H,W float) as compute_image_mean writes it."""
    mean = (total / count).astype(np.float32)
    c, h, w = mean.shape
    blob = caffe_pb2().BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean.ravel().tolist())
    write_atomic(path, blob.SerializeToString())


def build(list_file: str | Path, image_root: str | Path, out_dir: str | Path,
          options: BuildOptions = BuildOptions(), force: bool = False, progress: bool = True) -> BuildResult:
    """Build OUT_DIR/lmdb and OUT_DIR/mean.binaryproto from a list; resumes an interrupted build."""
    image_root, out_dir = Path(image_root), Path(out_dir)
    if not image_root.is_dir():
        raise CaffeTransferError(f"image root {image_root} does not exist")
    if options.resize < 0:
        raise CaffeTransferError(f"--resize {options.resize}: expected a size in pixels, or 0 to keep sizes")
    entries = read_list(list_file)
    final, partial = out_dir / "lmdb", out_dir / "lmdb.partial"
    complete = out_dir / "COMPLETE"
    start = time.perf_counter()
    if complete.is_file() and final.is_dir() and not force:
        meta = json.loads(complete.read_text())
        mean = out_dir / "mean.binaryproto"
        return BuildResult(final, mean if mean.is_file() else None, meta["written"], meta["skipped"], 0.0, True,
                           meta.get("warned", 0))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CaffeTransferError(f"cannot write {out_dir}: {e.strerror or e}") from None
    if force and partial.exists():
        shutil.rmtree(partial)
    settings = {"list": str(Path(list_file).resolve()), "entries": len(entries), "resize": options.resize,
                "shuffle": options.shuffle, "seed": options.seed, "encoded": options.encoded, "gray": options.gray}
    settings_file = partial / "caffe-transfer-settings.json"
    if partial.exists() and (not settings_file.is_file() or json.loads(settings_file.read_text()) != settings):
        shutil.rmtree(partial)  # a half-built LMDB of other settings cannot be continued
    partial.mkdir(exist_ok=True)
    write_atomic(settings_file, json.dumps(settings, indent=1))
    # No fsync per commit: a killed process loses nothing the OS already has; synced at the end.
    # No writemap: mapped pages could not be dropped from the page cache (see _Flusher).
    env = lmdb.open(str(partial), map_size=INITIAL_MAP_SIZE, max_dbs=2, sync=False, metasync=False)
    try:
        state = _State(env)
        _fill(env, state, entries, image_root, options, partial / "data.mdb", out_dir.name if progress else None)
        mean_path = out_dir / "mean.binaryproto"
        has_mean = bool(state.count) and state.sum is not None
        if has_mean:
            write_mean(mean_path, state.sum, state.count)
        else:
            mean_path.unlink(missing_ok=True)
        with env.begin(write=True) as txn:
            txn.drop(state.db, delete=True)
        env.sync(True)
    finally:
        env.close()
    settings_file.unlink()
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    for name, listing in (("skipped.txt", state.skipped), ("warnings.txt", state.warned)):
        write_atomic(out_dir / name, "".join(f"{path}\t{text}\n" for path, text in listing))
    write_atomic(complete, json.dumps({**settings, "written": state.count, "skipped": len(state.skipped),
                                       "warned": len(state.warned), "mean": has_mean}, indent=1) + "\n")
    return BuildResult(final, mean_path if has_mean else None, state.count, len(state.skipped),
                       time.perf_counter() - start, warned=len(state.warned))


def _fill(env: lmdb.Environment, state: _State, entries: list, image_root: Path, options: BuildOptions,
          data_file: Path, progress: str | None) -> None:
    """Convert and write the images from `state.next` on, on all cores, with a progress bar."""
    positions = order(len(entries), options.shuffle, options.seed)
    todo = [(int(i), entries[p][0], entries[p][1]) for i, p in enumerate(positions) if i >= state.next]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), initial=state.next, unit="img", desc=progress, smoothing=0.05)
    chunks = [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]
    workers = max(1, min(options.workers or os.cpu_count() or 1, len(chunks)))
    ahead = max(AHEAD_MIN, BATCH // CHUNK // workers + 2)  # a batch's worth in flight, for the commit
    caffe_pb2()  # imported once here, inherited by the forked workers
    keep_freed_heap()  # the writer's
    slots = _Slots.for_options(options, workers * ahead)
    flusher = _Flusher(data_file)
    try:
        with _Workers(chunks, workers, ahead, image_root, options, slots, _first_written(env)) as pool:
            _write(env, state, pool.results(), slots, bar, flusher)
    finally:
        flusher.close()
        if bar:
            bar.close()


def _first_written(env: lmdb.Environment) -> tuple[int, str, int] | None:
    """(position, path, label) of an image already in the LMDB, if any: one known not to kill its
    process (its label is not needed)."""
    with env.begin() as txn:
        cursor = txn.cursor()
        key = cursor.key() if cursor.first() else b""  # keys %08d_path sort before the state database's name
    position, _, path = key.partition(b"_")
    return (int(position), path.decode(), 0) if position.isdigit() and path else None


def _write(env: lmdb.Environment, state: _State, results, slots: _Slots | None, bar, flusher: _Flusher) -> None:
    """Write converted chunks, which come in list order.

    A chunk is put into the open transaction as soon as it comes, which frees its shared-memory
    slot; the transaction commits, with the progress that includes it, every BATCH images, and
    early when the map might not hold the next chunk (the map grows only between transactions)."""
    txn, room, done = None, 0, 0

    def say(line: str) -> None:  # on stderr above the progress bar; the reports have them all
        if bar:
            bar.write(line, file=sys.stderr)

    def commit() -> None:
        nonlocal txn, done
        state.save(txn)
        txn.commit()
        txn = None
        flusher.poke()
        if bar:
            bar.update(done)
        done = 0

    try:
        for slot, (last, records, total, mixed) in results:
            if isinstance(total, str):
                total = slots.sum_view(slot)
            payloads = [(rel, key, slots.view(slot, *payload) if isinstance(payload, tuple) else payload, warning)
                        for rel, key, payload, warning in records]
            need = sum(_footprint(key, payload) for _, key, payload, _ in payloads if key) + state.footprint(total)
            if txn is not None and need > room:
                commit()
            if txn is None:
                room = _room(env)
                if need > room:
                    env.set_mapsize(2 * env.info()["map_size"] + 2 * need)
                    room = _room(env)
                txn = env.begin(write=True)
            for rel, key, payload, warning in payloads:
                if key is None:
                    state.note(state.skipped, rel, payload)
                    say(f"{rel}: skipped: {payload}")
                else:
                    txn.put(key, payload)
                    state.count += 1
                if warning:
                    state.note(state.warned, rel, warning)
                    say(f"{rel}: written, with a decoder warning: {warning}")
            state.add(total, mixed)
            del payloads, total  # views into the slot, which is reused once the next result is asked for
            room -= need
            state.next = last + 1
            done += len(records)
            if done >= BATCH:
                commit()
        if txn is not None:
            commit()
    finally:
        if txn is not None:  # interrupted: what was not committed is done again on the next run
            txn.abort()


def read_mean(path: str | Path) -> np.ndarray:
    """A mean BlobProto as a float32 C,H,W array."""
    blob = caffe_pb2().BlobProto()
    blob.ParseFromString(Path(path).read_bytes())
    return np.array(blob.data, dtype=np.float32).reshape(blob.channels, blob.height, blob.width)

