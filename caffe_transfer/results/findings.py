"""The paper's findings, one by one, checked against a report's numbers (the demo's, or any grid).

Each finding states what the paper found, what these runs measured, and whether the measurement
shows it. A difference smaller than `NOISE` counts as no difference: at small scale every point
is one run scored on a few hundred validation images.
"""

from __future__ import annotations

from pathlib import Path

from caffe_transfer.common.atomic import write_atomic

NOISE = 0.01


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _pp(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f} points"


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def findings(summary: dict) -> list[dict]:
    """[{finding, paper, measured, verdict}] for each finding the summary has numbers for."""
    base = summary["base_mean"]
    layers = summary["layers"]
    out = []

    def add(finding: str, paper: str, measured: str, shows: bool | None) -> None:
        verdict = "not measured" if shows is None else ("shows" if shows else "does not show")
        out.append({"finding": finding, "paper": paper, "measured": measured, "verdict": verdict})

    bnb = layers["BnB"]
    middle = [v for v in bnb[2:6] if v is not None]  # n = 3..6
    dip = None if base is None or not middle else base - min(middle)
    add("Fragile co-adaptation",
        "BnB (frozen lower layers, upper ones retrained on the same task) drops below the base at "
        "n = 3..6 and recovers at n = 6..7",
        f"base {_f(base)}; BnB n=1..7 {' '.join(_f(v) for v in bnb)}; deepest dip at n=3..6 {_pp(dip)}",
        None if dip is None else dip > NOISE)

    anb = layers["AnB"]
    fall = None if anb[0] is None or anb[-1] is None else anb[0] - anb[-1]
    gap = _mean([None if a is None or b is None else b - a for a, b in zip(anb[4:], bnb[4:])])
    add("Specificity of higher layers",
        "AnB (frozen layers from the other half) falls as n grows, below BnB at n = 5..7",
        f"AnB n=1..7 {' '.join(_f(v) for v in anb)}; n=1 minus n=7 {_pp(fall)}; BnB minus AnB at n=5..7 {_pp(gap)}",
        None if fall is None or gap is None else fall > NOISE and gap > NOISE)

    boost = summary["table1"]["1-7"]
    add("Transfer plus fine-tuning generalizes better",
        "AnB+ beats the base (+1.6 points over n = 1..7) and BnB+ (+1.4)",
        f"AnB+ n=1..7 {' '.join(_f(v) for v in layers['AnB+'])}; over base {_pp(boost['over_baseB'])}, "
        f"over BnB+ {_pp(boost['over_BnB+'])}",
        None if boost["over_baseB"] is None else boost["over_baseB"] > NOISE)

    bnbp = _mean(layers["BnB+"])
    off = None if bnbp is None or base is None else bnbp - base
    add("Fine-tuning the selffer recovers the base",
        "BnB+ matches the base at every n",
        f"BnB+ n=1..7 {' '.join(_f(v) for v in layers['BnB+'])}; mean minus base {_pp(off)}",
        None if off is None else abs(off) <= NOISE)

    drops = summary["drops_at_7"]
    add("Dissimilar tasks transfer worse",
        "at n = 7 AnB drops 8 points below the base between random halves, 25 between natural "
        "and man-made",
        f"drop at n=7: similar halves {_pp(drops['similar'])}, dissimilar split {_pp(drops['dissimilar'])}",
        None if drops["similar"] is None or drops["dissimilar"] is None
        else drops["dissimilar"] - drops["similar"] > NOISE)

    rnd = summary["random"]
    low = [v for v in rnd["layers"][2:] if v is not None]
    worse = None if not low or rnd["base"] is None else rnd["base"] - max(low)
    add("Random frozen filters are poor",
        "freezing random filters costs little at n = 1..2 and much from n = 3 (near chance)",
        f"full net {_f(rnd['base'])}; random n=1..7 {' '.join(_f(v) for v in rnd['layers'])}; "
        f"full net minus best of n=3..7 {_pp(worse)}",
        None if worse is None else worse > NOISE)
    return out


def write_findings(summary: dict, path: str | Path, title: str) -> str:
    """findings.md: a table and a paragraph per finding; returns the text."""
    rows = findings(summary)
    lines = [f"# {title}: the paper's findings at this scale", "",
             f"Scores are the paper's metric ({summary['metric']}). Differences under "
             f"{NOISE * 100:.0f} point count as none: every point is a single run.", "",
             "| finding | verdict |", "| --- | --- |"]
    lines += [f"| {r['finding']} | {r['verdict']} |" for r in rows]
    for r in rows:
        lines += ["", f"## {r['finding']}: {r['verdict']}", "", f"- paper: {r['paper']}", f"- measured: {r['measured']}"]
    text = "\n".join(lines) + "\n"
    write_atomic(Path(path), text)
    return text
