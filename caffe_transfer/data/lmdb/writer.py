"""The parent's side of a build: converted chunks into the LMDBs, with the progress that includes them.

Chunks come in the build's order; each is put into the open transaction of every LMDB that holds
its images as soon as it comes (which frees its shared-memory slot), and the transactions commit
every BATCH images together with each LMDB's progress (`State`: next position in the build's
order, float64 pixel sum, skipped images) in a named sub-database of the same LMDB. A process
killed at any point and run again therefore continues from the last committed batch and ends with
every image exactly once in every LMDB.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import lmdb
import numpy as np

from caffe_transfer.data.lmdb.datum import Slots, Span, relabel, relabel_in_place
from caffe_transfer.data.lmdb.decode import Item, Skipped
from caffe_transfer.data.lmdb.workers import Converted

if TYPE_CHECKING:
    from caffe_transfer.data.lmdb.target import Target

BATCH = 256  # Datums per round of LMDB transactions (and of progress records): their pages, malloc'd
# until the commit, stay within the heap that decode.keep_freed_heap keeps
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
        self.sum_saved = True  # whether the LMDB holds the sum as it is here
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
        self.sum_saved = False

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
        if self.sum is not None and not self.sum_saved:  # 1.5 MB for 256x256: not again for an LMDB
            txn.put(b"sum", self.sum.tobytes(), db=self.db)  # that got no image since (most, in a pass)
            self.sum_saved = True


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
            try:
                os.fdatasync(self.fd)
            except OSError:
                return  # a full disk: the writer's own commit or final sync reports it
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


def datum_key(number: int, path: str) -> bytes:
    """A Datum's key, as convert_imageset writes it: its position in the LMDB's order, then its path."""
    return f"{number:08d}_{path}".encode()


def footprint(key: bytes, length: int) -> int:
    """An upper bound on the map bytes one record takes (a value of `length` bytes, or of a few
    more for another label): its value's overflow pages plus its key and node in a leaf page, and
    a share of the branch pages above."""
    return (length // _PAGE + 2) * _PAGE + 2 * len(key) + 64


def first_written(env: lmdb.Environment) -> Item | None:
    """An image already in the LMDB, if any: one known not to kill its process (its label is not
    needed)."""
    with env.begin() as txn:
        cursor = txn.cursor()
        key = cursor.key() if cursor.first() else b""  # keys %08d_path sort before the state database's name
    position, _, path = key.partition(b"_")
    return Item(int(position), path.decode(), 0) if position.isdigit() and path else None


class Sums:
    """Chunk pixel sums added up between commits per set of LMDBs (uint32), folded into each
    LMDB's float64 sum at the commit. A pass goes through the images grouped by the LMDBs that
    hold them, so consecutive chunks mostly share their LMDBs: a chunk is added once, not once
    per LMDB (a float64 add of a 256x256 image costs about as much as writing it)."""

    def __init__(self, states: list[State]):
        self.states = states
        self.held: dict[tuple[int, ...], np.ndarray] = {}

    def add(self, owners: tuple[int, ...], total: np.ndarray | None, mixed: bool) -> None:
        if total is None:
            for t in owners:
                self.states[t].add(None, mixed)
            return
        held = self.held.get(owners)
        if held is not None and held.shape != total.shape:  # images of other sizes: State says mixed
            self.fold()
            held = None
        if held is None:
            self.held[owners] = total.astype(np.uint32)
        else:
            held += total

    def fold(self) -> None:
        for owners, total in self.held.items():
            for t in owners:
                self.states[t].add(total, False)
        self.held.clear()


class Datums:
    """A chunk's Datums, each handed out with the label of the LMDB it goes into next. One in a
    slot is relabelled where it lies (LMDB copies a value when it is put, so the slot is free to
    change until the next put); one in bytes, or without room for its new label, is copied."""

    def __init__(self, slots: Slots | None, slot: int | None):
        self.slots, self.slot = slots, slot
        self.held: list[list] = []  # per Datum: its bytes or cell, its length, its label, whether in a slot

    def add(self, payload: bytes | Span, label: int) -> int:
        in_slot = isinstance(payload, Span)
        self.held.append([self.slots.cell(self.slot, payload) if in_slot else payload,
                          payload.length if in_slot else len(payload), label, in_slot])
        return len(self.held) - 1

    def length(self, d: int) -> int:
        return self.held[d][1]

    def get(self, d: int, label: int) -> bytes | memoryview:
        """Datum `d` labelled `label`, valid until the next `get` of `d`."""
        held = self.held[d]
        data, length, old, in_slot = held
        if label != old and in_slot:
            end = relabel_in_place(data, length, old, label)
            if end is not None:
                length = held[1] = end
                old = held[2] = label
        if label == old:
            return data[:length] if in_slot else data
        return relabel(data[:length] if in_slot else data, old, label)


Members = Callable[[int], list[tuple[int, int, int]]]  # position -> (target, key number, label) per LMDB


def write(targets: list[Target], members: Members, results: Iterable[Converted], slots: Slots | None,
          bar) -> None:
    """Write converted chunks, which come in the build's order, into every LMDB that holds them.

    All images of a chunk belong to the same LMDBs (see `make`). A chunk is put into their open
    transactions as soon as it comes, which frees its shared-memory slot; the transactions commit,
    with the progress that includes it, every BATCH images, and early when a map might not hold
    the next chunk (a map grows only between transactions). An LMDB whose progress is past a chunk
    (a kill between two LMDBs' commits) skips it."""
    txns: list = [None] * len(targets)
    room = [0] * len(targets)
    done, put, passed = 0, 0, 0  # images since the last commit, Datums put since, and where that is
    sums = Sums([target.state for target in targets])

    def say(line: str) -> None:  # on stderr above the progress bar; the reports have them all
        if bar:
            bar.write(line, file=sys.stderr)

    def begin(t: int, need: int) -> None:
        env = targets[t].env
        if txns[t] is None:
            room[t] = _room(env)
            if need > room[t]:
                env.set_mapsize(2 * env.info()["map_size"] + 2 * need)
                room[t] = _room(env)
            txns[t] = env.begin(write=True)

    def commit() -> None:
        nonlocal done, put
        sums.fold()
        for t, target in enumerate(targets):
            begin(t, target.state.footprint(None))
            target.state.next = max(target.state.next, passed)
            target.state.save(txns[t])
            txns[t].commit()
            txns[t] = None
            target.flusher.poke()
        if bar:
            bar.update(done)
        done = put = 0

    try:
        for slot, result in results:
            total = slots.sum_view(slot) if result.sum_in_slot else result.total
            datums = Datums(slots, slot)
            puts: dict[int, list[tuple[bytes, int, int]]] = {t: [] for t, _, _ in members(result.records[0].position)
                                                             if targets[t].state.next <= result.last}
            for record in result.records:
                if isinstance(record, Skipped):
                    say(f"{record.path}: skipped: {record.reason}")
                    for t, _, _ in members(record.position):
                        if t in puts:
                            targets[t].state.note(targets[t].state.skipped, record.path, record.reason)
                    continue
                if record.warning:
                    say(f"{record.path}: written, with a decoder warning: {record.warning}")
                own = members(record.position)
                d = datums.add(record.payload, own[0][2])
                for t, number, label in own:
                    if t in puts:
                        puts[t].append((datum_key(number, record.path), d, label))
                        if record.warning:
                            targets[t].state.note(targets[t].state.warned, record.path, record.warning)
            need = {t: sum(footprint(key, datums.length(d)) for key, d, _ in items) + targets[t].state.footprint(total)
                    for t, items in puts.items()}
            if any(txns[t] is not None and need[t] > room[t] for t in puts):
                commit()
            for t, items in puts.items():
                begin(t, need[t])
                items.sort()  # in key order: one C loop, and each leaf page touched once
                txns[t].cursor().putmulti([(key, datums.get(d, label)) for key, d, label in items])
                targets[t].state.count += len(items)
                room[t] -= need[t]
            sums.add(tuple(puts), total, result.mixed)
            del datums, total  # views into the slot, which is reused once the next result is asked for
            passed = result.last + 1
            done += len(result.records)
            put += sum(len(items) for items in puts.values())
            if put >= BATCH:
                commit()
        commit()
    finally:
        for txn in txns:
            if txn is not None:  # interrupted: what was not committed is done again on the next run
                txn.abort()
