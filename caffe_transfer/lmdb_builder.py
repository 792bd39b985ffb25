"""Class-filtered, relabelled, resized LMDBs and their mean images, as Caffe's tools make them.

One LMDB per list file, with what `convert_imageset` would write: Datums (uint8, C,H,W, BGR,
the list's label) keyed `%08d_<path>` by position in the (by default shuffled, fixed-seed) list,
images resized to 256x256 (`--resize 0` keeps their size); `encoded=True` stores JPEG bytes
instead (the original file where no resize is needed), which Caffe decodes with OpenCV. The mean
image is written as `compute_image_mean` would, from a float64 sum so that 1.28M images lose no
precision.

Decoding and resizing run in worker processes on all cores; the parent writes in list order, one
LMDB transaction per batch, and keeps its progress (next position, the float64 pixel sum, the
skipped images) in a named sub-database of the same LMDB, committed in the same transaction. A
process killed at any point and run again therefore continues from the last committed batch and
ends with every image exactly once. Finished, the state sub-database is dropped (Caffe reads the
main database only), the LMDB is renamed from `lmdb.partial` to `lmdb`, and `COMPLETE` is written;
a complete LMDB is never rebuilt unless forced. Unreadable images are skipped, counted and listed in
`skipped.txt`.

Output layout (what `gen` reads): OUT_DIR/lmdb, OUT_DIR/mean.binaryproto, OUT_DIR/skipped.txt,
OUT_DIR/COMPLETE.
"""

from __future__ import annotations

import io
import json
import mmap
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image

from .atomic import write_atomic
from .caffe_env import caffe_pb2
from .errors import CaffeTransferError
from .splits import read_list

DEFAULT_SIZE = 256
DEFAULT_SEED = 0
BATCH = 256  # images per LMDB transaction (and per progress record)
CHUNK = 32   # images per worker task
STATE_DB = b"caffe-transfer-progress"
JPEG_QUALITY = 95  # what OpenCV's imencode (convert_imageset --encoded) uses


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


def order(count: int, shuffle: bool, seed: int) -> np.ndarray:
    """The list positions in database order (a fixed-seed permutation, or the list order)."""
    return np.random.default_rng(seed).permutation(count) if shuffle else np.arange(count)


# --- worker side -------------------------------------------------------------------------------
_ROOT: Path | None = None
_OPTIONS: BuildOptions | None = None
_SLOTS: _Slots | None = None


def _init_worker(root: Path, options: BuildOptions, slots: _Slots | None) -> None:
    global _ROOT, _OPTIONS, _SLOTS
    _ROOT, _OPTIONS, _SLOTS = root, options, slots


class _Slots:
    """Shared memory for raw Datums of a fixed size: a worker serializes a chunk's Datums into
    one slot and the parent puts them into the LMDB from there, so the 196 KB of pixels of a
    256x256 image never go through a pipe. Mapped before the workers fork, so all share it."""

    def __init__(self, count: int, record: int):
        self.count, self.record = count, record
        self.size = CHUNK * record
        self.mem = mmap.mmap(-1, count * self.size)

    @classmethod
    def for_options(cls, options: BuildOptions, workers: int) -> _Slots | None:
        if options.encoded or not options.resize:
            return None  # sizes vary: pickled bytes instead
        channels = 1 if options.gray else 3
        # a batch's chunks wait for their commit while every worker converts one more
        count = BATCH // CHUNK + 2 * workers
        return cls(count, _HEADER_MAX + channels * options.resize ** 2)

    def view(self, slot: int, offset: int, length: int) -> memoryview:
        start = slot * self.size + offset
        return memoryview(self.mem)[start:start + length]


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
    """An image as uint8 H,W,C in BGR order (or H,W,1 grey), resized bilinearly to resize x resize."""
    mode = "L" if gray else "RGB"
    with Image.open(path) as img:
        if img.mode != mode:
            img = img.convert(mode)
        if resize and img.size != (resize, resize):
            img = img.resize((resize, resize), Image.BILINEAR)
        array = np.asarray(img)
    return array[:, :, None] if gray else array[:, :, ::-1]


def encode_image(path: Path, pixels: np.ndarray, resize: int) -> tuple[bytes, bool]:
    """JPEG bytes of the stored image, and whether they were re-encoded: the original file is
    kept where it is a JPEG that needed no resize."""
    h, w = pixels.shape[:2]
    if not resize or (h, w) == (resize, resize):
        data = path.read_bytes()
        if data[:3] == b"\xff\xd8\xff":
            return data, False
    rgb = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels[:, :, ::-1]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), True


def _decode(data: bytes, gray: bool) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        array = np.asarray(img.convert("L" if gray else "RGB"))
    return array[:, :, None] if gray else array[:, :, ::-1]


def _convert_one(position: int, rel: str, label: int, slot: int, offset: int):
    """One image -> (key, serialized Datum or its (offset, length) in the slot, pixels C,H,W)."""
    path = _ROOT / rel
    pixels = load_image(path, _OPTIONS.resize, _OPTIONS.gray)
    h, w, c = pixels.shape
    key = f"{position:08d}_{rel}".encode()
    if _SLOTS is not None and h * w * c + _HEADER_MAX <= _SLOTS.record:
        head, tail = datum_parts(c, h, w, label)
        out = _SLOTS.view(slot, offset, len(head) + h * w * c + len(tail))
        out[:len(head)] = head
        chw = np.frombuffer(out[len(head):len(head) + h * w * c], dtype=np.uint8).reshape(c, h, w)
        chw[...] = pixels.transpose(2, 0, 1)
        out[len(out) - len(tail):] = tail
        return key, (offset, len(out)), chw
    datum = caffe_pb2().Datum(channels=c, height=h, width=w, label=label)
    if _OPTIONS.encoded:
        datum.data, reencoded = encode_image(path, pixels, _OPTIONS.resize)
        datum.encoded = True
        if reencoded:  # the mean is of what Caffe will decode
            pixels = _decode(datum.data, _OPTIONS.gray)
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    if not _OPTIONS.encoded:
        datum.data = chw.tobytes()
    return key, datum.SerializeToString(), chw


def _convert_chunk(chunk: list[tuple[int, str, int]], slot: int):
    """A chunk of (position, path, label) -> its records and the exact sum of its pixels.

    Records are (path, key, Datum bytes or their (offset, length) in shared-memory slot `slot`),
    or (path, None, reason) for an unreadable image. The sum (uint32: at most CHUNK x 255 per
    pixel) travels once per chunk, not once per image, so the parent only writes."""
    records, total, mixed, offset = [], None, False, 0
    for position, rel, label in chunk:
        try:
            key, payload, chw = _convert_one(position, rel, label, slot, offset)
        except Exception as e:  # noqa: BLE001 - any unreadable image is skipped and reported
            records.append((rel, None, f"{type(e).__name__}: {e}".replace("\n", " ")))
            continue
        records.append((rel, key, payload))
        if isinstance(payload, tuple):
            offset += payload[1]
        if total is None and not mixed:
            total = np.zeros(chw.shape, dtype=np.uint32)
        if total is not None and chw.shape == total.shape:
            total += chw
        else:
            mixed, total = True, None
    return chunk[-1][0], records, total, mixed


# --- parent side -------------------------------------------------------------------------------
class _State:
    """Progress kept inside the LMDB: next position, pixel sum (float64), count, skipped images,
    and whether images of different sizes (no single mean) were seen."""

    def __init__(self, env: lmdb.Environment):
        self.db = env.open_db(STATE_DB)
        self.next, self.count, self.sum, self.skipped, self.mixed = 0, 0, None, [], False
        with env.begin(db=self.db) as txn:
            raw = txn.get(b"state")
            if raw:
                meta = json.loads(raw)
                self.next, self.count, self.skipped = meta["next"], meta["count"], meta["skipped"]
                self.mixed = meta["mixed"]
                total = txn.get(b"sum")
                if total and meta["shape"]:
                    self.sum = np.frombuffer(total, dtype=np.float64).reshape(meta["shape"]).copy()

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

    def save(self, txn) -> None:
        meta = {"next": self.next, "count": self.count, "skipped": self.skipped, "mixed": self.mixed,
                "shape": list(self.sum.shape) if self.sum is not None else None}
        txn.put(b"state", json.dumps(meta).encode(), db=self.db)
        if self.sum is not None:
            txn.put(b"sum", self.sum.tobytes(), db=self.db)


def _grow(env: lmdb.Environment, needed: int) -> None:
    info, stat = env.info(), env.stat()
    used = (info["last_pgno"] + 1) * stat["psize"]
    if used + 2 * needed > info["map_size"]:
        env.set_mapsize(max(2 * info["map_size"], used + 4 * needed))


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
        return BuildResult(final, mean if mean.is_file() else None, meta["written"], meta["skipped"], 0.0, True)
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
    # No writemap: with it every new page faults into the mapped file, 2.7x the parent's CPU.
    env = lmdb.open(str(partial), map_size=1 << 30, max_dbs=2, sync=False, metasync=False)
    state = _State(env)
    positions = order(len(entries), options.shuffle, options.seed)
    todo = [(int(i), entries[p][0], entries[p][1]) for i, p in enumerate(positions) if i >= state.next]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(entries), initial=state.next, unit="img", desc=out_dir.name, smoothing=0.05)
    workers = options.workers or os.cpu_count() or 1
    caffe_pb2()  # imported once here, inherited by the forked workers
    ctx = multiprocessing.get_context("fork")
    slots = _Slots.for_options(options, workers)
    try:
        chunks = [todo[i:i + CHUNK] for i in range(0, len(todo), CHUNK)]
        with ctx.Pool(workers, initializer=_init_worker, initargs=(image_root, options, slots)) as pool:
            for batch in _converted(pool, chunks, slots, workers):
                _commit(env, state, batch, slots, bar)
    finally:
        if bar:
            bar.close()
    mean_path = out_dir / "mean.binaryproto"
    has_mean = bool(state.count) and state.sum is not None
    if has_mean:
        write_mean(mean_path, state.sum, state.count)
    else:
        mean_path.unlink(missing_ok=True)
    with env.begin(write=True) as txn:
        txn.drop(state.db, delete=True)
    env.sync(True)
    env.close()
    settings_file.unlink()
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    skipped_text = "".join(f"{path}\t{reason}\n" for path, reason in state.skipped)
    write_atomic(out_dir / "skipped.txt", skipped_text)
    write_atomic(complete, json.dumps({**settings, "written": state.count, "skipped": len(state.skipped),
                                       "mean": has_mean}, indent=1) + "\n")
    return BuildResult(final, mean_path if has_mean else None, state.count, len(state.skipped),
                       time.perf_counter() - start)


def _converted(pool, chunks: list, slots: _Slots | None, workers: int):
    """Batches of converted chunks, in list order, as (slot, result) pairs. Without shared memory
    every chunk gets slot 0 (unused); with it, a chunk is only submitted when a slot is free, and
    a batch's slots are free again once the caller has committed it (the next iteration)."""
    free = list(range(slots.count)) if slots else None
    in_flight = slots.count if slots else 4 * workers
    waiting: list = []
    batch: list = []
    todo = iter(chunks)

    def submit() -> bool:
        chunk = next(todo, None)
        if chunk is None:
            return False
        slot = free.pop() if free is not None else 0
        waiting.append((slot, pool.apply_async(_convert_chunk, (chunk, slot))))
        return True

    while len(waiting) < in_flight and submit():
        pass
    while waiting:
        slot, result = waiting.pop(0)
        batch.append((slot, result.get()))
        if len(batch) * CHUNK >= BATCH or not waiting:
            yield batch
            if free is not None:
                free += [slot for slot, _ in batch]
            batch = []
        while len(waiting) < in_flight and (free is None or free) and submit():
            pass


def _commit(env: lmdb.Environment, state: _State, batch: list, slots: _Slots | None, bar) -> None:
    """Write converted chunks and the progress that includes them in one transaction."""
    if not batch:
        return

    def payload_of(slot: int, payload):
        return slots.view(slot, *payload) if isinstance(payload, tuple) else payload

    _grow(env, sum(len(payload_of(slot, payload)) for slot, (_, records, _, _) in batch
                   for _, key, payload in records if key))
    done = 0
    with env.begin(write=True) as txn:
        for slot, (last, records, total, mixed) in batch:
            for rel, key, payload in records:
                if key is None:
                    state.skipped.append([rel, payload])
                else:
                    txn.put(key, payload_of(slot, payload))
                    state.count += 1
            state.add(total, mixed)
            done += len(records)
        state.next = batch[-1][1][0] + 1
        state.save(txn)
    if bar:
        bar.update(done)


def read_mean(path: str | Path) -> np.ndarray:
    """A mean BlobProto as a float32 C,H,W array."""
    blob = caffe_pb2().BlobProto()
    blob.ParseFromString(Path(path).read_bytes())
    return np.array(blob.data, dtype=np.float32).reshape(blob.channels, blob.height, blob.width)

