"""Atomic writes never replace what is not a regular file: a root user's `--json /dev/null`
once turned /dev/null into a file for the whole machine."""

import os
import threading

from caffe_transfer.common.atomic import write_atomic


def test_a_pipe_is_written_into_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    write_atomic(fifo, "numbers\n")
    reader.join(timeout=10)
    assert got == ["numbers\n"]
    assert fifo.is_fifo()


def test_a_regular_file_is_replaced_whole(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old and longer\n")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["report.json"]
