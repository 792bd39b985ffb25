"""The authors' runs as data: their scores and val-accuracy curves, and a run checked against them.

A CaffeNet run of the paper takes days; a user should learn early, not at the end, that it is off.
`authors_runs.json` (beside this file) holds, for each kind of run (a treatment family and n, e.g.
`AnB n=3`; `base` for the 8 random-split bases), the names and scores of the authors' runs of that
kind and their val top-1 accuracy at each stored test iteration: mean, standard deviation and how
many runs had a test there. It is derived from the released logs by

    python -m caffe_transfer.results.curves REFERENCE/convnet_transfer/results

and says so in its `source` and `command`. The spread of a kind with a single run (the
natural/man-made nets, the random-frozen and reduced-data nets, the full net) is that of the 8
bases, the only repeats of one setting the authors released besides the split families.

`check(run_dir)` puts a run's latest stored-iteration test beside the authors' mean at the same
iteration for the same kind; outside `findings.Z` standard deviations it is flagged. Only runs of
CaffeNet on the paper's schedule are comparable; others are marked "n/a" with the reason.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.model.solvers import solver_values
from caffe_transfer.model.treatments import Kind, Treatment, parse
from caffe_transfer.results.findings import Z
from caffe_transfer.runs import logs

DATA = Path(__file__).with_name("authors_runs.json")
BASES = "base"
COMMAND = "python -m caffe_transfer.results.curves REFERENCE/convnet_transfer/results"
SCHEDULE_KEYS = ("base_lr", "lr_policy", "gamma", "stepsize", "max_iter", "momentum", "weight_decay")
ARCH = "caffenet"


def stored(iteration: int) -> bool:
    """The test iterations the data file keeps: every 1000 up to 10000, then every 5000."""
    return iteration % 1000 == 0 and (iteration <= 10000 or iteration % 5000 == 0)


def kind_of(t: Treatment) -> str:
    """The authors' runs a run is compared with: same treatment family, n and (for the
    natural/man-made split) target half; AnB pools A->B and B->A, as the paper's figures do."""
    if t.kind is Kind.BASE:
        return BASES if t.split != "natman" else f"base natman {t.half}"
    if t.kind is Kind.TRANSFER:
        return f"{t.family} n={t.n}" if t.split != "natman" else f"natman {t.family} to {t.half} n={t.n}"
    if t.kind is Kind.RANDOM:
        return f"random n={t.n}"
    if t.kind is Kind.REDUCED:
        return f"reduced {t.per_class}"
    return "full"


def _sd(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def build(results_dir: str | Path) -> dict:
    """The data file's content from the authors' `results/` folder (one folder per run)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise CaffeTransferError(f"{results_dir} is not a folder: expected the authors' convnet_transfer/results")
    kinds: dict[str, dict] = {}
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        test = logs.read_run(folder, train=False).test
        acc = [r[logs.ACCURACY] for r in test if logs.ACCURACY in r]
        if not acc:
            continue
        entry = kinds.setdefault(kind_of(parse(folder.name)), {"runs": [], "scores": [], "curves": []})
        entry["runs"].append(folder.name)
        entry["scores"].append(round(logs.score(acc), 5))
        entry["curves"].append({r["NumIters"]: r[logs.ACCURACY] for r in test
                                if logs.ACCURACY in r and stored(r["NumIters"])})
    for entry in kinds.values():
        curves = entry.pop("curves")
        entry["iterations"] = sorted(set().union(*curves))
        at = [[c[i] for c in curves if i in c] for i in entry["iterations"]]
        entry["mean"] = [round(statistics.fmean(v), 5) for v in at]
        entry["sd"] = [None if _sd(v) is None else round(_sd(v), 5) for v in at]
        entry["count"] = [len(v) for v in at]
    return {"source": f"the authors' released logs, {results_dir.name}/*/ of convnet_transfer "
                      "(Yosinski et al. 2014); scores with the paper's metric (logs.score)",
            "command": COMMAND, "stored_iterations": "every 1000 up to 10000, then every 5000",
            "kinds": dict(sorted(kinds.items()))}


def main(argv: list[str]) -> None:
    """Rebuild the data file: `python -m caffe_transfer.results.curves RESULTS_DIR [OUT]`."""
    if len(argv) not in (1, 2):
        raise SystemExit(f"usage: {COMMAND} [OUT.json]")
    try:
        data = build(argv[0])
    except CaffeTransferError as e:
        raise SystemExit(f"error: {e}") from None
    out = Path(argv[1]) if len(argv) > 1 else DATA
    write_atomic(out, json.dumps(data, separators=(",", ":")).replace('},"', '},\n"') + "\n")
    print(f"wrote {out}: {len(data['kinds'])} kinds of run, {sum(len(k['runs']) for k in data['kinds'].values())} runs")


@functools.cache
def load(path: Path = DATA) -> dict:
    return json.loads(path.read_text())["kinds"]


def spread(kind: str, at: int | None = None, path: Path = DATA) -> tuple[float | None, float | None, int]:
    """(mean, standard deviation, runs) of the authors' runs of `kind`: their scores, or with `at`
    their val accuracy at that test iteration. Kinds of one run take the bases' deviation."""
    kinds = load(path)
    if kind not in kinds:
        return None, None, 0
    entry = kinds[kind]
    if at is None:
        mean, sd, count = statistics.fmean(entry["scores"]), _sd(entry["scores"]), len(entry["scores"])
        return mean, sd if sd is not None else _sd(kinds[BASES]["scores"]), count
    if at not in entry["iterations"]:
        return None, None, 0
    k = entry["iterations"].index(at)
    sd = entry["sd"][k]
    if sd is None and at in kinds[BASES]["iterations"]:
        sd = kinds[BASES]["sd"][kinds[BASES]["iterations"].index(at)]
    return entry["mean"][k], sd, entry["count"][k]


@dataclass(frozen=True)
class CurveCheck:
    """A run's val accuracy at its latest stored test beside the authors' for its kind."""

    run: str
    kind: str
    iteration: int | None = None
    accuracy: float | None = None
    authors_mean: float | None = None
    authors_sd: float | None = None
    authors_runs: int = 0
    outcome: str = "n/a"

    @property
    def flagged(self) -> bool:
        return self.outcome in ("below", "above")

    @property
    def label(self) -> str:
        """One cell for status and report: `0.512 vs 0.530±0.006 below`, or why not compared."""
        if self.authors_mean is None or self.accuracy is None:
            return self.outcome
        sd = "" if self.authors_sd is None else f"±{self.authors_sd:.3f}"
        return f"{self.accuracy:.3f} vs {self.authors_mean:.3f}{sd} {self.outcome}"


def describe(folder: Path) -> tuple[Treatment, dict, str]:
    """What a run folder holds: treatment, solver values and architecture, from gen's
    treatment.json, else (the authors' folders) from its name and the paper's CaffeNet."""
    desc = folder / "treatment.json"
    if desc.is_file():
        try:
            d = json.loads(desc.read_text())
        except (OSError, ValueError) as e:
            raise CaffeTransferError(f"{desc.name} is not readable JSON ({e})") from None
        if not isinstance(d, dict):
            raise CaffeTransferError(f"{desc.name} holds a {type(d).__name__}, not gen's JSON object")
        try:
            solver = dict(d["solver"], max_iter=int(d["solver"]["max_iter"]))
            return parse(d["name"]), solver, d.get("architecture", ARCH)
        except (KeyError, TypeError, ValueError) as e:
            raise CaffeTransferError(f"{desc.name} has no valid name and solver.max_iter "
                                     f"({type(e).__name__}: {e})") from None
    t = parse(folder.name)
    return t, solver_values(t.schedule), ARCH


def compare(name: str, treatment: Treatment, solver: dict, arch: str, test: list[dict]) -> CurveCheck:
    """The check on a run's test table (rows with NumIters and accuracy)."""
    kind = kind_of(treatment)
    paper = solver_values(treatment.schedule)
    if arch != ARCH or any(solver.get(k) != paper[k] for k in SCHEDULE_KEYS):
        return CurveCheck(name, kind, outcome="n/a: not CaffeNet on the paper's schedule")
    rows = [r for r in test if logs.ACCURACY in r and stored(r["NumIters"])]
    if not rows:
        return CurveCheck(name, kind, outcome="n/a: no test yet")
    row = rows[-1]
    mean, sd, count = spread(kind, row["NumIters"])
    check = CurveCheck(name, kind, row["NumIters"], row[logs.ACCURACY], mean, sd, count)
    if mean is None or sd is None or math.isnan(check.accuracy):
        return CurveCheck(**{**check.__dict__, "outcome": "n/a: the authors have no test there"})
    outcome = "on" if abs(check.accuracy - mean) <= Z * sd else ("below" if check.accuracy < mean else "above")
    return CurveCheck(**{**check.__dict__, "outcome": outcome})


def check(run_dir: str | Path) -> CurveCheck:
    """A run folder (gen's, or named the authors' way) against the authors' curve of its kind."""
    run_dir = Path(run_dir)
    treatment, solver, arch = describe(run_dir)
    return compare(run_dir.name, treatment, solver, arch, logs.read_run(run_dir, train=False).test)


if __name__ == "__main__":
    main(sys.argv[1:])
