"""The paper's figures from a report summary (matplotlib, PNG and PDF).

Figure 2: every run as a point per treatment and n (top) and lines through the means (bottom).
Figure 3: natural/man-made split, random frozen filters, and everything relative to its base.
The reduced-data curve (supplementary), linear and log. Marker shapes and colours follow the
authors' renderings (`convnet_transfer/plots/cached_plots/`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from caffe_transfer.common.atomic import write_atomic  # noqa: E402
from caffe_transfer.results.findings import groups_of  # noqa: E402

STYLE = {  # family: (label, marker, face colour, x offset)
    "base": ("baseB", "o", "white", 0.0),
    "BnB": ("selffer BnB", "o", "#0000ee", -0.25),
    "BnB+": ("selffer BnB$^+$", "P", "#aab4ff", -0.08),
    "AnB": ("transfer AnB", "D", "#ee0000", 0.08),
    "AnB+": ("transfer AnB$^+$", "D", "#ffbbbb", 0.25),
}
LAYERS = list(range(1, 8))


NATMAN_TITLE = "Man-made/Natural split"


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=110, bbox_inches="tight")
        path = out_dir / f"{stem}.{ext}"
        write_atomic(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def _points(summary: dict, family: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for run in summary["runs"]:
        if run["score"] is None or run["split"] not in ("0", "1", "2", "3") or run["family"] != family:
            continue
        if family == "base" and summary.get("base_half") not in (None, run["half"]):
            continue
        xs.append((run["n"] or 0) + STYLE[family][3])
        ys.append(run["score"])
    return xs, ys


def figure2(summary: dict, out_dir: Path) -> list[Path]:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 9), sharex=True)
    for family, (label, marker, color, _) in STYLE.items():
        xs, ys = _points(summary, family)
        if xs:
            top.scatter(xs, ys, marker=marker, s=55, facecolor=color, edgecolor="black", linewidth=0.7, label=label)
    base = summary["base_mean"]
    # The bars: run-to-run SD of each point's repeats, each split's difficulty taken out, as the
    # findings judge them (across splits of 10 classes the halves' difficulty would dominate).
    groups = groups_of(summary, within_split=True)

    def sd(key: tuple) -> float | None:
        return statistics.stdev(groups[key]) if len(groups.get(key, ())) > 1 else None

    base_sd = sd(("base", "halves", summary.get("base_half"), None))
    sds = {f: [sd((f, "halves", None, n)) for n in LAYERS] for f in ("BnB", "BnB+", "AnB", "AnB+")}
    for family in ("BnB", "BnB+", "AnB", "AnB+"):
        label, marker, color, offset = STYLE[family]
        pts = [(n, v, sd) for n, v, sd in zip(LAYERS, summary["layers"][family], sds[family]) if v is not None]
        if base is not None:
            pts = [(0, base, None)] + pts
        if len(pts) > 1:
            bottom.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                        markeredgecolor="black", label=label)
        bars = [p for p in pts if p[2] is not None]
        if bars:  # the run-to-run SD of the repeats at each point, beside it
            bottom.errorbar([p[0] + offset for p in bars], [p[1] for p in bars], yerr=[p[2] for p in bars],
                            fmt="none", ecolor=color, elinewidth=1.2, capsize=3)
    if base is not None:
        bottom.plot([0], [base], "o", markerfacecolor="white", markeredgecolor="black", markersize=8, label="baseB")
        if base_sd is not None:
            bottom.errorbar([0], [base], yerr=[base_sd], fmt="none", ecolor="black", capsize=3)
    for ax in (top, bottom):
        ax.set_ylabel("Top-1 accuracy (higher is better)")
        ax.set_xlim(-0.4, 7.4)
        ax.grid(alpha=0.25)
        if ax.get_legend_handles_labels()[0]:  # a report with no runs of a family draws no legend
            ax.legend(loc="lower left", fontsize=9)
    bottom.set_xlabel("Layer $n$ at which the network is chopped and retrained")
    top.set_title("Figure 2: transfer between random A/B halves" + (f"\n{summary['title']}" if summary.get("title") else ""))
    if base_sd is not None or any(v is not None for v in sum(sds.values(), [])):
        bottom.set_title("means over repeats; bars: one standard deviation of the runs (within splits)", fontsize=9)
    return _save(fig, out_dir, "figure2")


def _relative(values: list, base) -> list:
    return [None if v is None or base is None else v - base for v in values]


def figure3(summary: dict, out_dir: Path) -> list[Path]:
    fig = plt.figure(figsize=(9, 7))
    grid = fig.add_gridspec(5, 2)
    nm_ax, rnd_ax, rel_ax = fig.add_subplot(grid[:2, 0]), fig.add_subplot(grid[:2, 1]), fig.add_subplot(grid[2:, :])
    orange, olive = "#ff8c00", "#b5b500"
    natman = summary["natman"]
    for key in ("target_natural", "target_manmade"):
        row = natman[key]
        _line(nm_ax, row["base"], row["layers"], "o", orange)
    nm_ax.set_title(summary.get("natman_title", NATMAN_TITLE))
    nm_ax.set_ylabel("Top-1 accuracy")
    rnd = summary["random"]
    _line(rnd_ax, rnd["base"], rnd["layers"], "v", olive)
    rnd_ax.set_title("Random, untrained filters")
    rel_ax.plot([0], [0], "o", markerfacecolor="white", markeredgecolor="black", markersize=8, label="reference")
    anb = _relative(summary["layers"]["AnB"], summary["base_mean"])
    nm_rel = [_mean2(a, b) for a, b in zip(*(_relative(natman[k]["layers"], natman[k]["base"])
                                            for k in ("target_natural", "target_manmade")))]
    for values, marker, color, label in ((anb, "D", "#ee0000", "mean AnB, random splits"),
                                         (nm_rel, "o", orange, "mean AnB, dissimilar split"),
                                         (_relative(rnd["layers"], rnd["base"]), "v", olive, "random features")):
        _line(rel_ax, 0.0, values, marker, color, label=label)
    rel_ax.set_ylim(-0.3, 0.03)
    rel_ax.set_ylabel("Relative top-1 accuracy (higher is better)")
    rel_ax.set_xlabel("Layer $n$ at which the network is chopped and retrained")
    rel_ax.legend(loc="lower center", fontsize=9)
    for ax in (nm_ax, rnd_ax, rel_ax):
        ax.set_xlim(-0.2, 7.2)
        ax.grid(alpha=0.25)
    fig.tight_layout()
    return _save(fig, out_dir, "figure3")


def _mean2(a, b):
    vals = [v for v in (a, b) if v is not None]
    return sum(vals) / len(vals) if vals else None


def _line(ax, base, values, marker, color, label=None) -> None:
    pts = ([(0, base)] if base is not None else []) + [(n, v) for n, v in zip(LAYERS, values) if v is not None]
    if not pts:
        return
    ax.plot(*zip(*pts), marker=marker, color=color, markeredgecolor="black", label=label)
    if base is not None:
        ax.plot([0], [base], "o", markerfacecolor="white", markeredgecolor="black", markersize=8)


def reduced_figure(summary: dict, out_dir: Path) -> list[Path]:
    pts = sorted((int(k), v) for k, v in summary["reduced"].items() if v is not None)
    fig, (lin, log) = plt.subplots(2, 1, figsize=(7, 7))
    if pts:
        for ax in (lin, log):
            ax.plot(*zip(*pts), "o-", color="#0000ee", markersize=8)
            ax.set_ylabel("Top-1 accuracy")
            ax.grid(alpha=0.25)
        log.set_xscale("log")
        log.set_yscale("log")
    lin.set_xlabel("Number of examples per class (linear)")
    log.set_xlabel("Number of examples per class (log)")
    lin.set_title("Reduced training data (all 1000 classes)")
    return _save(fig, out_dir, "reduced")


def write_figures(summary: dict, out_dir: str | Path) -> list[Path]:
    """Figure 2 always; Figure 3 and the reduced-data curve where some of their runs exist."""
    out_dir = Path(out_dir)
    written = figure2(summary, out_dir)
    natman = [v for row in summary["natman"].values() for v in row["layers"]]
    if any(v is not None for v in natman + summary["random"]["layers"]):
        written += figure3(summary, out_dir)
    if any(v is not None for v in summary["reduced"].values()):
        written += reduced_figure(summary, out_dir)
    return written
