"""Reading `caffe train` logs: train and test tables, merged across restarts, and the metric.

Two formats are read, plain or gzipped:
- today's glog format: `Iteration N (...), loss = V`, `Iteration N, lr = V`,
  `Test net output #k: NAME = V`, `Train net output #k: NAME = V`;
- the 2014 format of the authors' logs: `Iteration N, loss = V`, `Iteration N, lr = V`,
  `Test score #0: V` (top-1 accuracy) and `Test score #1: V` (the val loss of the 2014 accuracy
  layer), named `accuracy` and `loss` here.

Tables have the columns of Caffe's `tools/extra/parse_log.py` (NumIters, Seconds, LearningRate,
then one column per output), with its rules (and where it finds no `Train net output` lines, the
train loss from the `Iteration N, loss = V` lines): a row per iteration at which outputs were printed,
the learning rate last printed before it, seconds since the start of the log. A run restarted from
a snapshot leaves several files (the authors') or one appended file (`caffe-transfer train`);
either way rows are merged by iteration, the later one winning. Junk lines
are skipped; truncated, stub and test-less files are reported, never fatal.

The paper's metric (EXPERIMENT.md): a run's score is the mean of its 10 highest val top-1
accuracies over all test evaluations.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.runs.records import session_runs

TOP_K = 10
STUB_BYTES = 200
ACCURACY = "accuracy"
COLUMNS = ("NumIters", "Seconds", "LearningRate")
LOG_SUFFIXES = (".log", ".gz", ".txt")

_LINE = re.compile(
    rb"^[IWEF](\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)[^\]\n]*\] +(?:"
    rb"Iteration (\d+)(?: \([^)\n]*\))?(?:, loss = (\S+)|, lr = (\S+))?"
    rb"|Test score #(\d+): (\S+)"
    rb"|Test net output #\d+: (\S+) = (\S+)"
    rb"|Train net output #\d+: (\S+) = (\S+)"
    rb"|(Solving))",
    re.M)
# The fast path for test tables: a literal prefix lets the regex engine skip train lines.
_TEST_LINE = re.compile(rb"Test (?:score #(\d+): (\S+)|net output #\d+: (\S+) = (\S+))")
_STAMP = re.compile(rb"[IWEF](\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)")
_ITERATION = re.compile(rb"Iteration (\d+)")
_LR = re.compile(rb", lr = (\S+)")
LR_WINDOW = 1 << 16  # how far back the fast path looks for the last printed learning rate
_SCORE_NAMES = {b"0": ACCURACY, b"1": "loss"}  # 2014 accuracy layer: top-1, then log loss


@dataclass
class LogTables:
    """Train and test tables of one run (rows are dicts with parse_log.py's columns)."""

    train: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    last_iteration: int | None = None

    def accuracies(self, name: str = ACCURACY) -> list[float]:
        return [row[name] for row in self.test if name in row]


def _read(path: Path, problems: list[str]) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(b"\x1f\x8b"):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error):
        # A truncated gzip: keep what decompresses.
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            data = d.decompress(raw)
        except zlib.error:
            data = b""
        problems.append(f"{path.name}: truncated gzip, read {len(data)} bytes")
        return data


def _score_name(number: bytes) -> str:
    return _SCORE_NAMES.get(number, f"score{number.decode()}")


def _float(b: bytes) -> float:
    try:
        return float(b)
    except ValueError:
        return float("nan")


class _Clock:
    """Seconds since the first stamp. Older glog stamps (I0403 06:46:22) carry no year: it is
    taken from the file's date and rolled over at new year; glog >= 0.6 prints it (I20261127)."""

    def __init__(self, year: int):
        self.year, self.start, self.last_month = year, None, None

    def seconds(self, m: re.Match) -> float:
        year, month, day, hh, mm, ss, frac = m.group(1, 2, 3, 4, 5, 6, 7)
        month = int(month)
        if year:
            self.year = int(year)
        if self.last_month is not None and month < self.last_month:
            self.year += 1
        self.last_month = month
        try:
            t = dt.datetime(self.year, month, int(day), int(hh), int(mm), int(ss), int(frac[:6].ljust(6, b"0")))
        except ValueError:
            return float("nan")
        if self.start is None:
            self.start = t
        return (t - self.start).total_seconds()


def parse_file(path: str | Path, train: bool = True) -> LogTables:
    """Tables of one log file. With `train=False` only the test table is built (much faster)."""
    path = Path(path)
    out = LogTables(files=[path])
    if not path.is_file():
        out.problems.append(f"{path.name}: missing")
        return out
    data = _read(path, out.problems)
    if len(data) < STUB_BYTES:
        out.problems.append(f"{path.name}: stub ({len(data)} bytes)")
    tail = _ITERATION.findall(data[-4096:])
    out.last_iteration = int(tail[-1]) if tail else None
    clock = _Clock(dt.datetime.fromtimestamp(os.path.getmtime(path)).year)
    iteration, lr = None, float("nan")
    rows = {"train": [], "test": [], "iteration_loss": []}

    def add(table: str, name: str, value: float, m: re.Match) -> None:
        current = rows[table]
        if not current or current[-1]["NumIters"] != iteration or name in current[-1]:
            current.append({"NumIters": iteration, "Seconds": clock.seconds(m), "LearningRate": lr})
        current[-1][name] = value

    solving = data.find(b"] Solving")
    first = _STAMP.match(data, data.rfind(b"\n", 0, solving) + 1 if solving >= 0 else 0)
    if first:
        clock.seconds(first)
    if train:
        for m in _LINE.finditer(data):
            if m.group(8) is not None:
                iteration = int(m.group(8))
                if m.group(10) is not None:
                    lr = _float(m.group(10))
                elif m.group(9) is not None:
                    add("iteration_loss", "loss", _float(m.group(9)), m)
            elif m.group(17) is not None or iteration is None:
                continue
            elif m.group(11) is not None:
                add("test", _score_name(m.group(11)), _float(m.group(12)), m)
            elif m.group(13) is not None:
                add("test", m.group(13).decode(), _float(m.group(14)), m)
            elif m.group(15) is not None:
                add("train", m.group(15).decode(), _float(m.group(16)), m)
    else:
        for m in _TEST_LINE.finditer(data):
            line = data.rfind(b"\n", 0, m.start()) + 1
            stamp = _STAMP.match(data, line)
            it = _ITERATION.match(data, max(data.rfind(b"Iteration ", 0, line), 0))
            if not stamp or not it:
                continue
            iteration = int(it.group(1))
            at = data.rfind(b", lr = ", max(line - LR_WINDOW, 0), line)
            lr = _float(_LR.match(data, at).group(1)) if at >= 0 else float("nan")
            if m.group(1) is not None:
                add("test", _score_name(m.group(1)), _float(m.group(2)), stamp)
            else:
                add("test", m.group(3).decode(), _float(m.group(4)), stamp)
    if not rows["train"]:
        # 2014 logs, and nets whose loss layer has no top (as in the authors' nets): Caffe prints
        # no `Train net output` lines, so the `Iteration N, loss = V` lines give the train loss.
        rows["train"] = rows["iteration_loss"]
    for table in rows.values():
        # A log appended across restarts repeats the iterations after the snapshot it resumed
        # from: as when merging files, the later rows win.
        table[:] = _by_iteration([table])
        if len(table) > 1:  # parse_log.py's fix: the first rows precede the first printed lr
            table[0]["LearningRate"] = table[1]["LearningRate"]
    out.train, out.test = rows["train"], rows["test"]
    if not out.test and len(data) >= STUB_BYTES:
        out.problems.append(f"{path.name}: no test evaluations")
    return out


def read_line(line: bytes) -> tuple[int | None, float | None, str | None, float | None]:
    """What one line of a running `caffe train` says: (iteration, train loss, test output name,
    value), None where the line does not say it. For live progress; tables come from parse_file."""
    m = _LINE.match(line)
    if not m:
        return None, None, None, None
    iteration = int(m.group(8)) if m.group(8) is not None else None
    loss = _float(m.group(9)) if m.group(9) is not None else None
    if m.group(13) is not None:
        return iteration, loss, m.group(13).decode(), _float(m.group(14))
    if m.group(11) is not None:
        return iteration, loss, _score_name(m.group(11)), _float(m.group(12))
    return iteration, loss, None, None


def _natural_key(path: Path) -> list:
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", path.name)]


def merge(parts: list[LogTables]) -> LogTables:
    """One run's tables from its files in order: by iteration, the later file winning."""
    out = LogTables()
    for part in parts:
        out.files += part.files
        out.problems += part.problems
        if part.last_iteration is not None:
            out.last_iteration = max(out.last_iteration or 0, part.last_iteration)
    out.train = _by_iteration([part.train for part in parts])
    out.test = _by_iteration([part.test for part in parts])
    return out


def _by_iteration(tables: list[list[dict]]) -> list[dict]:
    """Rows of several tables in iteration order, one per iteration, the later row winning."""
    rows: dict[int, dict] = {}
    for table in tables:
        rows.update((row["NumIters"], row) for row in table)
    return [rows[k] for k in sorted(rows)]


def log_files(run_dir: str | Path) -> list[Path]:
    """The log files of a run folder, oldest first (the authors' job ids, or our train.log)."""
    run_dir = Path(run_dir)
    return sorted((p for p in run_dir.iterdir() if p.is_file() and p.name.endswith(LOG_SUFFIXES)),
                  key=_natural_key)


def read_logs(paths: list[str | Path], train: bool = True) -> LogTables:
    """Merged tables of the given files, in the given order (later wins)."""
    return merge([parse_file(p, train=train) for p in paths])


def read_run(run_dir: str | Path, train: bool = True, name: str | None = None) -> LogTables:
    """The merged tables of a run folder's logs; with `name` (the run's), a log whose session
    headers name another run is left out as unreadable (a log copied from another folder)."""
    files, foreign = log_files(run_dir), {}
    if name:
        foreign = {p: others for p in files if (others := session_runs(p) - {name})}
    tables = read_logs([p for p in files if p not in foreign], train=train)
    tables.problems += [f"{p.name}: unreadable: a log of {', '.join(sorted(others))}, not of {name}"
                        for p, others in foreign.items()]
    if not files:
        tables.problems.append(f"{Path(run_dir).name}: no log files")
    return tables


# --- the metric -------------------------------------------------------------------------------
def score(accuracies: list[float], top: int = TOP_K) -> float | None:
    """The paper's metric: the mean of the `top` highest accuracies (None with no evaluations)."""
    values = sorted((a for a in accuracies if a == a), reverse=True)[:top]
    return sum(values) / len(values) if values else None


def write_csv(rows: list[dict], path: Path) -> None:
    """A table as CSV with parse_log.py's columns (NumIters, Seconds, LearningRate, outputs)."""
    names = list(COLUMNS)
    for row in rows:
        names += [k for k in row if k not in names]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if not Path(path).parent.is_dir():
        raise CaffeTransferError(f"cannot write {path}: folder {Path(path).parent} does not exist")
    write_atomic(Path(path), buf.getvalue())
