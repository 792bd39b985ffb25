"""The report: every run's score, the paper's aggregates, Table 1, and a comparison with the paper.

Input is a folder of run folders named the authors' way (`half0A`, `transfer0A0B_1_3`, ...) or
written by `gen` (their `treatment.json` names them); the treatment model says what each run is.
Scores use the paper's metric (`logs.score`: mean of the 10 highest val top-1 accuracies).

Aggregates follow the authors' notebook: the base value is the mean of the 8 random-split base
halves; a per-layer row is, for each n, the mean over that family's runs at n (splits 0..3);
Table 1's boosts are means of per-layer means over a range of n, minus the base mean or minus
BnB+'s per-layer means. Natural/man-made rows are the single transfer run towards each half,
with that half's base; the random-frozen row is compared with the full 1000-class net.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.splits import REDUCED_PER_CLASS
from caffe_transfer.model.treatments import N_TRANSFERABLE, Kind, Treatment
from caffe_transfer.results import curves
from caffe_transfer.results.findings import Z
from caffe_transfer.results.paper import compare_with_paper
from caffe_transfer.runs import cudnn, logs
from caffe_transfer.runs.folder import Run, State

METRIC = "mean of the 10 highest val top-1 accuracies over all test evaluations (logs merged by iteration, later file winning)"
FAMILIES = ("BnB", "AnB", "BnB+", "AnB+")
TABLE1_RANGES = {"1-7": (1, 7), "3-7": (3, 7), "5-7": (5, 7)}


@dataclass
class RunResult:
    folder: str
    treatment: Treatment
    score: float | None
    evaluations: int
    last_iteration: int | None
    max_iter: int
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    curve: curves.CurveCheck | None = None
    state: tuple[State, str] | None = None  # as the run folder's owner says, for folders gen wrote
    cudnn: str = ""  # the cuDNN switches gen recorded (runs.cudnn.describe); '': Caffe's defaults

    @property
    def finished(self) -> bool:
        """Done, as the run folder says (its final snapshot, of this version of the folder); for
        the authors' folders, which have no snapshots, a log that reached max_iter."""
        if self.state is not None:
            return self.state[0] is State.DONE
        return self.last_iteration is not None and self.last_iteration >= self.max_iter


def _run(folder: Path) -> Run | None:
    try:
        return Run.load(folder)
    except CaffeTransferError:  # not a folder of this version of gen (the authors', or an older one)
        return None


def _collect_one(folder: Path) -> RunResult:
    treatment, solver, arch = curves.describe(folder)
    tables = logs.read_run(folder, train=False, name=treatment.name)
    acc = tables.accuracies()
    last = max([tables.last_iteration or 0] + [r["NumIters"] for r in tables.test]) if tables.files else None
    run = _run(folder)
    return RunResult(folder.name, treatment, logs.score(acc), len(acc), last, int(solver["max_iter"]),
                     [p.name for p in tables.files], tables.problems,
                     curves.compare(folder.name, treatment, solver, arch, tables.test),
                     run.state() if run else None, cudnn.describe(run.description.get("cudnn")) if run else "")


def collect(results_dirs: str | Path | list[Path], workers: int | None = None) -> tuple[list[RunResult], list[str]]:
    """Results of every recognised run folder under `results_dirs` (one folder, or several whose
    runs are repeats, named `<folder>/<run>`), and the folders not recognised (with the reason
    where a treatment.json could not be read)."""
    several = isinstance(results_dirs, list)
    folders, unknown = [], []
    for results_dir in map(Path, results_dirs if several else [results_dirs]):
        if not results_dir.is_dir():
            raise CaffeTransferError(f"results folder {results_dir} does not exist")
        for p in sorted(results_dir.iterdir()):
            if not p.is_dir():
                continue
            try:
                curves.describe(p)
                folders.append(p)
            except CaffeTransferError as e:  # a folder named like no run is no news; a broken run is
                unknown.append(f"{p.name}: {e}" if (p / "treatment.json").is_file() else p.name)
    if not folders:
        raise CaffeTransferError(f"no run folders in {results_dirs}: expected folders named like "
                                 "half0A or transfer0A0B_1_3, or written by caffe-transfer gen")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        runs = list(pool.map(_collect_one, folders, chunksize=8))
    if several:
        for run, folder in zip(runs, folders):
            run.folder = f"{folder.parent.name}/{folder.name}"
    return runs, unknown


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _sd(values: list[float]) -> float | None:
    """The run-to-run standard deviation of repeats (None for a single run)."""
    return statistics.stdev(values) if len(values) > 1 else None


def _scores(runs: list[RunResult], keep) -> list[float]:
    """Scores of the runs whose treatment satisfies `keep`."""
    return [r.score for r in runs if r.score is not None and keep(r.treatment)]


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarize(runs: list[RunResult], base_half: str | None = None) -> dict:
    """The paper's numbers from run results, as fractions (0.625, not 62.5%).

    The base level is the mean of all random-split bases (the paper's), or with `base_half` of
    those of one half: where only transfers to B were trained and the halves differ in difficulty."""
    random_splits = [r for r in runs if r.treatment.split in ("0", "1", "2", "3")]
    bases = _scores(random_splits, lambda t: t.kind is Kind.BASE and base_half in (None, t.half))
    base_mean = _mean(bases)
    points = {f: [_scores(random_splits, lambda t: t.family == f and t.n == n) for n in range(1, N_TRANSFERABLE + 1)]
              for f in FAMILIES}
    layers = {f: list(map(_mean, v)) for f, v in points.items()}
    table1 = {}
    for label, (lo, hi) in TABLE1_RANGES.items():
        rows = {f: _mean([layers[f][n - 1] for n in range(lo, hi + 1)]) for f in ("AnB+", "BnB+")}
        table1[label] = {"over_baseB": _diff(rows["AnB+"], base_mean), "over_BnB+": _diff(rows["AnB+"], rows["BnB+"])}

    def natman(target: str) -> dict:
        def on_target(t: Treatment) -> bool:
            return t.split == "natman" and t.half == target

        base = _mean(_scores(runs, lambda t: on_target(t) and t.kind is Kind.BASE))
        return {"base": base, "layers": [
            _mean(_scores(runs, lambda t: on_target(t) and t.kind is Kind.TRANSFER and t.n == n))
            for n in range(1, N_TRANSFERABLE + 1)]}

    full = _mean(_scores(runs, lambda t: t.kind is Kind.FULL))
    anb7 = layers["AnB"][-1]
    nm = {"target_manmade": natman("B"), "target_natural": natman("A")}  # the authors' A = natural
    nm_drops = [_diff(v["base"], v["layers"][-1]) for v in nm.values()]
    return {
        "metric": METRIC,
        "base_mean": base_mean,
        "base_sd": _sd(bases),
        "base_half": base_half,
        "full_net": full,
        "layers": layers,
        "layers_sd": {f: list(map(_sd, v)) for f, v in points.items()},
        "table1": table1,
        "natman": nm,
        "random": {"base": full, "layers": [_mean(_scores(runs, lambda t: t.kind is Kind.RANDOM and t.n == n))
                                            for n in range(1, N_TRANSFERABLE + 1)]},
        "reduced": {str(k): _mean(_scores(runs, lambda t: t.per_class == k)) for k in REDUCED_PER_CLASS},
        "drops_at_7": {"similar": _diff(base_mean, anb7), "dissimilar": _mean(nm_drops)},
        "runs": [{"name": r.folder, "treatment": r.treatment.name, "family": r.treatment.family,
                  "split": r.treatment.split, "half": r.treatment.half, "n": r.treatment.n, "score": r.score,
                  "evaluations": r.evaluations, "last_iteration": r.last_iteration,
                  "max_iter": r.max_iter, "files": r.files, "problems": r.problems,
                  "curve": r.curve.label if r.curve else None,
                  "curve_flagged": bool(r.curve and r.curve.flagged), "cudnn": r.cudnn} for r in runs],
    }


def incomplete_runs(runs: list[RunResult]) -> list[dict]:
    """Runs with no logs, stub or broken logs, no test evaluations, or that stopped early."""
    out = []
    for r in runs:
        reasons = list(r.problems)
        if r.evaluations == 0 and r.files:
            reasons.append("no test evaluations")
        if r.state is not None and not r.finished:
            state, detail = r.state
            reasons.append(f"{state.value} at iteration {r.last_iteration or 0} of {r.max_iter}"
                           + (f" ({detail})" if detail else ""))
        elif r.files and not r.finished:
            reasons.append(f"stopped at iteration {r.last_iteration} of {r.max_iter}")
        if reasons:
            out.append({"name": r.folder, "problems": reasons})
    return out


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return buf.getvalue()


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:+.2f}%" if pct else f"{v:.4f}"


def _their(runs: int, kind: str) -> str:
    return f"their {runs} runs of {kind}" if runs > 1 else f"their 8 bases; {runs} run of {kind}"


def text_report(summary: dict, comparison: list[dict], incomplete: list[dict], unknown: list[str]) -> str:
    lines = [f"Metric: {summary['metric']}.", "",
             f"Base (mean of the random-split bases{' of half ' + summary['base_half'] if summary.get('base_half') else ''}):"
             f" {_fmt(summary['base_mean'])};"
             f" full 1000-class net: {_fmt(summary['full_net'])}", "",
             "Per-layer means, n = 1..7:"]
    for f in FAMILIES:
        lines.append(f"  {f:5} " + " ".join(_fmt(v) for v in summary["layers"][f]))
    lines += ["", "Table 1: AnB+ boost", "  layers   over baseB   over BnB+"]
    for label, row in summary["table1"].items():
        lines.append(f"  {label:7}  {_fmt(row['over_baseB'], True):>10}  {_fmt(row['over_BnB+'], True):>10}")
    if comparison:
        lines += ["", f"Comparison with the paper: ours against the authors' run-to-run spread ({Z:g} SD of their "
                  "runs of that kind), and the parser's check (within 0.001 of the value recomputed from their logs):"]
    for row in comparison:
        parser = "ok" if (row["within_recomputed"] is not False and row["within_paper"] is not False) else "OFF"
        spread = {True: "within the authors' spread", False: "outside the authors' spread", None: "n/a"}
        lines.append(f"  {spread[row['within_spread']]:27} {'n/a' if row['ours'] is None else parser:4} {row['id']:28} "
                     f"paper {_fmt(row['paper'])}  recomputed {_fmt(row['recomputed'])}  ours {_fmt(row['ours'])}  "
                     f"(SD {_fmt(row['authors_sd'])} of {_their(row['authors_runs'], row['authors_kind'])})")
    checked = [r for r in summary["runs"] if r["curve"] and not r["curve"].startswith("n/a")]
    if checked:
        lines += ["", "Latest test against the authors' curve of the same kind (mean ± SD at that iteration):"]
        lines += [f"  {r['name']:24} {r['curve']}" for r in checked]
    switched = [r for r in summary["runs"] if r["cudnn"]]
    if switched:
        lines += ["", "Runs under cuDNN switches (gen --cudnn; the others ran Caffe's defaults):"]
        lines += [f"  {r['name']:24} {_fmt(r['score'])}  {r['cudnn']}" for r in switched]
    lines += ["", f"Runs with missing, stub or incomplete logs ({len(incomplete)}):"]
    lines += [f"  {r['name']}: {'; '.join(r['problems'])}" for r in incomplete] or ["  none"]
    if unknown:
        lines += ["", "Folders not recognised as runs:", *(f"  {u}" for u in unknown)]
    return "\n".join(lines) + "\n"


def write_report(results_dir: str | Path | list[Path], out_dir: str | Path, json_path: str | Path | None = None,
                 figures: bool = True, natman_title: str | None = None, compare: bool = True,
                 base_half: str | None = None, title: str | None = None) -> dict:
    """Collect, summarise and write the report files into `out_dir`; returns the summary.

    `natman_title` names the dissimilar split where it is not natural vs man-made, and
    `compare=False` leaves out the comparison with the paper's numbers (both for the demo);
    `title` names the runs in the figures. `results_dir` and `base_half` as in `collect` and
    `summarize`."""
    runs, unknown = collect(results_dir)
    summary = summarize(runs, base_half)
    summary.update({k: v for k, v in (("natman_title", natman_title), ("title", title)) if v})
    comparison = compare_with_paper(summary) if compare else []
    incomplete = incomplete_runs(runs)
    summary["comparison"] = comparison
    summary["incomplete"] = incomplete
    summary["unrecognised"] = unknown
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CaffeTransferError(f"cannot write report folder {out_dir}: {e.strerror or e}") from None
    write_atomic(out_dir / "runs.csv", _csv(summary["runs"], ["name", "treatment", "family", "split", "n", "score",
                                                              "evaluations", "last_iteration", "max_iter", "files",
                                                              "curve", "cudnn"]))
    means = [{"family": f, "n": n, "mean": summary["layers"][f][n - 1]} for f in FAMILIES for n in range(1, 8)]
    write_atomic(out_dir / "layer_means.csv", _csv(means, ["family", "n", "mean"]))
    t1 = [{"layers": k, **v} for k, v in summary["table1"].items()]
    write_atomic(out_dir / "table1.csv", _csv(t1, ["layers", "over_baseB", "over_BnB+"]))
    if comparison:
        write_atomic(out_dir / "comparison.csv", _csv(comparison, list(comparison[0])))
    write_atomic(out_dir / "incomplete.csv", _csv([{"name": r["name"], "problems": "; ".join(r["problems"])}
                                                   for r in incomplete], ["name", "problems"]))
    write_atomic(out_dir / "report.txt", text_report(summary, comparison, incomplete, unknown))
    if figures:
        from caffe_transfer.results.plots import write_figures

        write_figures(summary, out_dir)
    text = json.dumps(summary, indent=1) + "\n"
    write_atomic(out_dir / "report.json", text)
    if json_path:
        write_atomic(Path(json_path), text)
    return summary
