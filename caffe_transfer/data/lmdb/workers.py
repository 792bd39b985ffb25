"""Worker processes that convert chunks of a list, on all cores, results back in list order.

The chunk list is inherited by fork and each worker claims the next chunk from a shared counter,
so no task travels and the parent runs no pool threads: it only writes. A worker may run `ahead`
chunks ahead of the parent (its `ahead` shared-memory slots), enough to keep it busy while the
parent commits a batch. A worker's stderr is a file, read after each image, so that what a
decoder prints (libjpeg's warnings, or its last words) is tied to its image.

Each worker has its own pipe, so a worker that dies (the OOM killer, or a decoder that crashes on
one bad file) is seen here, where multiprocessing.Pool would wait forever; one stuck on a chunk
for STUCK_SECONDS (a decoder in an endless loop) is killed. Its chunk is then converted again one
image per process (`Workers.isolated`): an image whose process dies or sticks too is skipped and
reported like any unreadable one, the others are written, and a new worker takes the dead one's
place once its slots are free. Only when every image of the chunk, and an image that converted
before, kill their processes is it not the images: an error.
"""

from __future__ import annotations

import itertools
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.lmdb.datum import Slots
from caffe_transfer.data.lmdb.decode import (
    BuildOptions,
    ChunkResult,
    Converter,
    Item,
    Skipped,
    Written,
    init_decoder,
)

CHUNK = 16   # images per worker task
AHEAD_MIN = 3  # chunks a worker may run ahead of the parent: one in hand, one done, one spare
STUCK_SECONDS = 300.0  # a worker longer on one chunk, or a process on one image, is taken as stuck


class Converted(NamedTuple):
    """A chunk's result and the slot it lies in (None: converted one image per process, no slot)."""

    slot: int | None
    result: ChunkResult


def _work(w: int, ahead: int, chunks: list[list[Item]], claims, busy, converter: Converter,
          conn, close: list, stderr: int) -> None:
    """Worker `w`: claim the next chunk, convert it into the next of its `ahead` slots, send the
    result on its own pipe; before reusing a slot, wait until the parent is done with it. While
    converting, busy[w] holds when it began."""
    _start_child(close, stderr)
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
            result = converter.chunk(chunks[index], slot)
            busy[w] = 0.0
            conn.send((index, slot, result))
        conn.send(None)  # finished, as opposed to dead
    except (EOFError, ConnectionError, KeyboardInterrupt):
        pass  # the parent is gone, or interrupted: nothing left to hand back


def _alone(item: Item, converter: Converter, conn, close: list, stderr: int) -> None:
    """Convert one image in a process of its own (see `Workers.isolated`), without shared memory."""
    _start_child(close, stderr)
    conn.send(Converter(converter.root, converter.options, None).chunk([item], 0))


def _start_child(close: list, stderr: int) -> None:
    """Close the parent's pipe ends inherited by fork (so that a dead parent ends a child's recv,
    and a dead child the parent's), make `stderr` the child's fd 2, and set up the decoder."""
    for conn in close:
        conn.close()
    os.dup2(stderr, 2)
    init_decoder()


class Workers:
    """The worker processes of one build; `results()` hands their chunks back in list order."""

    def __init__(self, chunks: list[list[Item]], workers: int, ahead: int, root: Path, options: BuildOptions,
                 slots: Slots | None, control: Item | None):
        self.chunks, self.ahead = chunks, ahead
        self.converter = Converter(root, options, slots)  # each child has its copy, by fork
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
        started = self._fork(_work, f"make-lmdb-{w}", w, self.ahead, self.chunks, self.claims, self.busy,
                             self.converter)
        if self.stderr[w] is not None:
            self.stderr[w].close()
        self.procs[w], self.conns[w], self.stderr[w] = started

    def results(self) -> Iterator[Converted]:
        """Each chunk's result in list order, or one result per image of a chunk converted one by
        one. A chunk's slot is free again once the next result is asked for."""
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
                yield from (Converted(None, result) for result in self.isolated(index, *lost.pop(index)))
                continue
            w, slot, result = pending.pop(index)
            if self.control is None:
                self.control = next((item for item, record in zip(self.chunks[index], result.records)
                                     if isinstance(record, Written)), None)
            yield Converted(slot, result)
            owed[w] -= 1
            try:
                self.conns[w].send(None)  # the slot is free
            except ConnectionError:
                pass  # finished, or died: then its next result says so

    def isolated(self, index: int, w: int, death: str) -> list[ChunkResult]:
        """The results of chunk `index`, whose worker died, converted one image per process."""
        chunk = self.chunks[index]
        alone = [self._alone(item) for item in chunk]
        if all(result is None for result, _ in alone) and (self.control is None or
                                                           self._alone(self.control)[0] is None):
            raise CaffeTransferError(
                f"make-lmdb worker {w} died ({death}) converting the {len(chunk)} images from {chunk[0].path} on, "
                "and so did a process for each of them alone, and "
                + (f"one for {self.control.path}, which converted before: not the images' fault" if self.control
                   else "no image has converted yet to compare with")
                + "; what was written is kept, run again to go on")
        return [result or ChunkResult(item.position, [Skipped(item.position, item.path, f"the decoder died on it ({how})")],
                                      None, False, False)
                for item, (result, how) in zip(chunk, alone)]

    def _alone(self, item: Item) -> tuple[ChunkResult | None, str]:
        """`Converter.chunk([item])` in a process of its own: its result, or None and how it died."""
        proc, parent_end, stderr = self._fork(_alone, "make-lmdb-alone", item, self.converter)
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

    def __enter__(self) -> Workers:
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
