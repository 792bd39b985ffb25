"""The parent's side of a build: converted chunks into the LMDB, with the progress that includes them.

Chunks come in list order; each is put into the open transaction as soon as it comes (which frees
its shared-memory slot), and the transaction commits every BATCH images together with the
progress (`State`: next position, float64 pixel sum, skipped images) in a named sub-database of
the same LMDB. A process killed at any point and run again therefore continues from the last
committed batch and ends with every image exactly once.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Iterable

import lmdb
import numpy as np

from caffe_transfer.data.lmdb.datum import Slots, Span
from caffe_transfer.data.lmdb.decode import Item, Skipped
from caffe_transfer.data.lmdb.workers import Converted

BATCH = 256  # images per LMDB transaction (and per progress record)
STATE_DB = b"caffe-transfer-progress"
_PAGE = 4096


class State:
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


class Flusher:
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


def _room(env: lmdb.Environment) -> int:
    """Bytes the map can still take (outside a write transaction)."""
    info = env.info()
    return info["map_size"] - (info["last_pgno"] + 1) * env.stat()["psize"]


def _footprint(key: bytes, value) -> int:
    """An upper bound on the map bytes one record takes: its value's overflow pages plus its key
    and node in a leaf page, and a share of the branch pages above."""
    return (len(value) // _PAGE + 2) * _PAGE + 2 * len(key) + 64


def first_written(env: lmdb.Environment) -> Item | None:
    """An image already in the LMDB, if any: one known not to kill its process (its label is not
    needed)."""
    with env.begin() as txn:
        cursor = txn.cursor()
        key = cursor.key() if cursor.first() else b""  # keys %08d_path sort before the state database's name
    position, _, path = key.partition(b"_")
    return Item(int(position), path.decode(), 0) if position.isdigit() and path else None


def write(env: lmdb.Environment, state: State, results: Iterable[Converted], slots: Slots | None, bar,
          flusher: Flusher) -> None:
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
        for slot, result in results:
            total = slots.sum_view(slot) if result.sum_in_slot else result.total
            records = [record._replace(payload=slots.view(slot, record.payload))
                       if not isinstance(record, Skipped) and isinstance(record.payload, Span) else record
                       for record in result.records]
            need = sum(_footprint(r.key, r.payload) for r in records if not isinstance(r, Skipped))
            need += state.footprint(total)
            if txn is not None and need > room:
                commit()
            if txn is None:
                room = _room(env)
                if need > room:
                    env.set_mapsize(2 * env.info()["map_size"] + 2 * need)
                    room = _room(env)
                txn = env.begin(write=True)
            for record in records:
                if isinstance(record, Skipped):
                    state.note(state.skipped, record.path, record.reason)
                    say(f"{record.path}: skipped: {record.reason}")
                    continue
                txn.put(record.key, record.payload)
                state.count += 1
                if record.warning:
                    state.note(state.warned, record.path, record.warning)
                    say(f"{record.path}: written, with a decoder warning: {record.warning}")
            state.add(total, result.mixed)
            del records, total  # views into the slot, which is reused once the next result is asked for
            room -= need
            state.next = result.last + 1
            done += len(result.records)
            if done >= BATCH:
                commit()
        if txn is not None:
            commit()
    finally:
        if txn is not None:  # interrupted: what was not committed is done again on the next run
            txn.abort()
