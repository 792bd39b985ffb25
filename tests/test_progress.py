"""Progress where nobody watches a terminal (SLURM, nohup, `demo.sh > log`): a plain line at most
every 30 seconds and one at the end, with the bar's facts; on a terminal, tqdm's bar (issue 28)."""

from __future__ import annotations

import io

from tqdm import tqdm

from caffe_transfer.common.progress import PLAIN_EVERY, PlainLines, progress
from caffe_transfer.data.lmdb import build


class Clock:
    """A clock the test moves: no sleeping, no timing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_one_plain_line_at_most_every_30_seconds_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = progress(1000, "grid", stream=out, clock=clock)
    assert isinstance(bar, PlainLines) and PLAIN_EVERY == 30
    start = clock.now
    for second in range(95):  # an update and a new postfix every second, for 95 seconds
        clock.now = start + second
        bar.update(10)
        bar.set_postfix_str(f"runs {second // 10}/10 done", refresh=True)
    bar.close()
    bar.close()  # closed once: no second end line
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 4, lines  # at 30, 60 and 90 seconds (by the update, before that second's
    # postfix), and the end
    for line, (seconds, done, runs) in zip(lines, [(30, 310, 2), (60, 610, 5), (90, 910, 8), (94, 950, 9)]):
        assert line.startswith(f"grid: {round(100 * done / 1000):3d}% {done}/1000 it [{seconds // 60:02d}:{seconds % 60:02d}<"), line
        assert f"{done / seconds:.2f}it/s, runs {runs}/10 done]" in line, line


def test_no_line_before_30_seconds_but_the_end_line():
    out, clock = io.StringIO(), Clock()
    bar = progress(40, "half0A", unit="img", initial=10, stream=out, clock=clock)
    clock.now += 29.9
    bar.update(30)
    bar.set_postfix({"loss": "2.301", "val acc": "0.1000"}, refresh=True)
    assert out.getvalue() == ""
    bar.write("c1/1.jpg: skipped: not an image")  # a note goes out at once, on its own line
    bar.close()
    note, end = out.getvalue().splitlines()
    assert note == "c1/1.jpg: skipped: not an image"
    assert end.startswith("half0A: 100% 40/40 img [00:29<00:00, ") and end.endswith("loss=2.301, val acc=0.1000]")


def test_on_a_terminal_the_bar_as_before_and_nothing_when_disabled():
    tty = Terminal()
    bar = progress(100, "grid", stream=tty)
    assert isinstance(bar, tqdm)
    bar.update(100)
    bar.close()
    assert "\r" in tty.getvalue() and "100/100" in tty.getvalue()
    for stream in (Terminal(), io.StringIO()):
        quiet = progress(100, "grid", enabled=False, stream=stream)
        quiet.update(50)
        quiet.set_postfix_str("x", refresh=True)
        quiet.close()
        assert stream.getvalue() == ""


def test_make_lmdb_into_a_log_writes_plain_lines(tmp_path, capsys, pb2):
    """A real build with stderr captured (not a terminal): no redrawn frames, its end line."""
    import cv2
    import numpy as np

    (tmp_path / "img" / "c0").mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(tmp_path / "img" / "c0" / f"{i}.png"), np.full((8, 8, 3), i, np.uint8))
    (tmp_path / "list.txt").write_text("".join(f"c0/{i}.png 0\n" for i in range(6)))
    result = build(tmp_path / "list.txt", tmp_path / "img", tmp_path / "db")
    assert result.written == 6
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines()[-1].startswith("db: 100% 6/6 img [")
