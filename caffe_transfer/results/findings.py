"""The paper's findings, one by one, judged on a report's runs (the demo's, or any grid).

The rules were written before any run of the demo was looked at, and are not tuned to one.
Each finding is a few comparisons between groups of runs (a treatment at a range of n, or the
base), with the control the paper itself uses:

- Fragile co-adaptation: BnB at n = 3..5 below the base; BnB at n = 1..2 and at n = 7 level
  with it (frozen self-copied layers cost nothing low down or at the top, and something in the
  middle, where co-adapted neurons were cut apart).
- Specificity of higher layers: AnB below BnB at n = 5..7, and that gap larger than at n = 1..2
  (transferred features hurt more the higher they come from).
- Transfer plus fine-tuning generalizes better: AnB+ (n = 1..7) above the base AND above BnB+,
  the selffer that trained exactly as long; beating only the base could be extra training.
- Dissimilar tasks transfer worse: at n = 7 the dissimilar split's AnB drops further below its
  own base than the random halves' AnB below theirs.
- Random frozen filters are poor: the full net minus random-frozen at n = 3..7 is above zero,
  and larger than at n = 1..2 (they cost little low down and much from n = 3).

The noise is measured, not assumed: the spread is the pooled standard deviation of the scores of
repeated runs of the same treatment and n (the random splits, or seeds), each random-split score
taken relative to its split (`groups_of`). A comparison of group
means counts only beyond Z = 2 standard errors of that spread; "level" means within it. A finding
"shows" when every comparison goes its way; "does not show" when one goes the other way beyond
the spread; otherwise it is "inconclusive" (among others when no point was repeated, so no spread
was measured).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from caffe_transfer.common.atomic import write_atomic

Z = 2.0
RANDOM_SPLITS = ("0", "1", "2", "3")
SHOWS, NOT, INCONCLUSIVE, UNMEASURED = "shows", "does not show", "inconclusive", "not measured"


@dataclass(frozen=True)
class Group:
    """Scores of the runs one side of a comparison averages (e.g. BnB at n = 3..5)."""

    label: str
    scores: tuple[float, ...]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None


@dataclass(frozen=True)
class Condition:
    """`sum(sign * group mean)` is expected to be "above" zero, "below" it, or "level" with it."""

    what: str
    terms: tuple[tuple[float, Group], ...]
    expected: str

    def value(self) -> float | None:
        if any(not g.scores for _, g in self.terms):
            return None
        return sum(sign * g.mean for sign, g in self.terms)

    def margin(self, sd: float | None) -> float | None:
        """Z standard errors of the value, from the pooled run-to-run spread."""
        if sd is None or self.value() is None:
            return None
        return Z * sd * math.sqrt(sum(sign ** 2 / len(g.scores) for sign, g in self.terms))

    def outcome(self, sd: float | None) -> str:
        """"holds", "contradicted" or "unclear" (within the spread, or no spread measured)."""
        value, margin = self.value(), self.margin(sd)
        if value is None:
            return UNMEASURED
        if margin is None:
            return "unclear"
        beyond = abs(value) > margin
        if self.expected == "level":
            return "contradicted" if beyond else "holds"
        if not beyond:
            return "unclear"
        return "holds" if (value > 0) == (self.expected == "above") else "contradicted"


def verdict(conditions: list[Condition], sd: float | None) -> str:
    outcomes = [c.outcome(sd) for c in conditions]
    if UNMEASURED in outcomes:
        return UNMEASURED
    if "contradicted" in outcomes:
        return NOT
    if all(o == "holds" for o in outcomes):
        return SHOWS
    return INCONCLUSIVE


def groups_of(summary: dict, within_split: bool = False) -> dict[tuple, list[float]]:
    """Run scores by (family, split kind, target half, n): the repeats of one point. The kind is
    "halves" (random splits 0..3; as in the paper, AnB pools A->B and B->A), "natman" or "whole".

    With `within_split`, each random-split run's score is taken relative to its split: minus the
    mean of all runs with that split and target half, plus the mean of all random-split runs.
    Halves of 10 classes differ in difficulty far more than halves of 1000 do, and every point
    is measured on the same splits, so that difference is no noise of a comparison between points."""
    runs = [r for r in summary["runs"] if r["score"] is not None]
    offset: dict[tuple, float] = {}
    if within_split:
        halves = [r for r in runs if r["split"] in RANDOM_SPLITS]
        blocks: dict[tuple, list[float]] = {}
        for r in halves:
            blocks.setdefault((r["split"], r["half"]), []).append(r["score"])
        grand = statistics.fmean(r["score"] for r in halves) if halves else 0.0
        offset = {b: statistics.fmean(v) - grand for b, v in blocks.items()}
    out: dict[tuple, list[float]] = {}
    for run in runs:
        kind = "halves" if run["split"] in RANDOM_SPLITS else run["split"] or "whole"
        half = None if kind == "halves" and run["family"] != "base" else run["half"]
        score = run["score"] - offset.get((run["split"], run["half"]), 0.0)
        out.setdefault((run["family"], kind, half, run["n"]), []).append(score)
    return out


def pooled_sd(groups: dict[tuple, list[float]]) -> float | None:
    """The pooled within-group standard deviation over every point that was repeated."""
    repeated = [g for g in groups.values() if len(g) > 1]
    dof = sum(len(g) - 1 for g in repeated)
    if not dof:
        return None
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in repeated) / dof)


def conditions(summary: dict) -> dict[str, tuple[str, list[Condition]]]:
    """Finding -> (the paper's result, the comparisons that judge it here), on scores relative to
    their split (the same means as the raw scores' where every point has run on every split)."""
    groups = groups_of(summary, within_split=True)
    base_half = summary.get("base_half")

    def pick(label: str, family: str, kind: str = "halves", half: str | None = None, ns=(None,)) -> Group:
        return Group(label, tuple(s for (f, k, h, n), v in groups.items() for s in v
                                  if f == family and k == kind and n in ns and half in (None, h)))

    def at(family: str, ns: tuple[int, ...], kind: str = "halves") -> Group:
        return pick(f"{family} n={ns[0]}" + (f"..{ns[-1]}" if len(ns) > 1 else ""), family, kind, ns=ns)

    base = pick("base" + (base_half or ""), "base", half=base_half)
    low, middle, high, all_n = (1, 2), (3, 4, 5), (5, 6, 7), tuple(range(1, 8))
    full = pick("full net", "full", "whole")
    rnd_low, rnd_high = at("random", low, "whole"), at("random", (3, 4, 5, 6, 7), "whole")
    # The dissimilar split's drop: the mean over its target halves (those trained) of base - AnB at n = 7.
    natman = [(pick(f"dissimilar base {h}", "base", "natman", h),
               pick(f"dissimilar AnB n=7 to {h}", "AnB", "natman", h, (7,))) for h in "AB"]
    natman = [pair for pair in natman if pair[1].scores] or natman[1:]
    dissimilar_drop = tuple(term for b, t in natman for term in ((1 / len(natman), b), (-1 / len(natman), t)))
    return {
        "Fragile co-adaptation": (
            "BnB drops below the base at n = 3..5 and is level with it at n = 1..2 and 7", [
                Condition("BnB n=3..5 minus base", ((1, at("BnB", middle)), (-1, base)), "below"),
                Condition("BnB n=1..2 minus base", ((1, at("BnB", low)), (-1, base)), "level"),
                Condition("BnB n=7 minus base", ((1, at("BnB", (7,))), (-1, base)), "level")]),
        "Specificity of higher layers": (
            "AnB falls below BnB as n grows (0 points at n = 1..2, up to 8 at n = 7)", [
                Condition("BnB minus AnB at n=5..7", ((1, at("BnB", high)), (-1, at("AnB", high))), "above"),
                Condition("that gap minus the gap at n=1..2",
                          ((1, at("BnB", high)), (-1, at("AnB", high)), (-1, at("BnB", low)), (1, at("AnB", low))), "above")]),
        "Transfer plus fine-tuning generalizes better": (
            "AnB+ beats the base (+1.6 points over n = 1..7) and BnB+ (+1.4), which trained as long", [
                Condition("AnB+ n=1..7 minus base", ((1, at("AnB+", all_n)), (-1, base)), "above"),
                Condition("AnB+ minus BnB+ at n=1..7", ((1, at("AnB+", all_n)), (-1, at("BnB+", all_n))),
                          "above")]),
        "Dissimilar tasks transfer worse": (
            "at n = 7 AnB drops 8 points below the base between random halves, 25 between natural and man-made", [
                Condition("drop at n=7, dissimilar split minus random halves",
                          dissimilar_drop + ((-1, base), (1, at("AnB", (7,)))), "above")]),
        "Random frozen filters are poor": (
            "freezing random filters costs little at n = 1..2 and much from n = 3 (near chance)", [
                Condition("full net minus random n=3..7", ((1, full), (-1, rnd_high)), "above"),
                Condition("that cost minus the cost at n=1..2", ((-1, rnd_high), (1, rnd_low)), "above")]),
    }


def _pp(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def findings(summary: dict) -> list[dict]:
    """[{finding, paper, verdict, sd, conditions: [{what, expected, value, margin, outcome, groups}]}]."""
    sd = pooled_sd(groups_of(summary, within_split=True))
    out = []
    for name, (paper, conds) in conditions(summary).items():
        rows = [{"what": c.what, "expected": c.expected, "value": c.value(), "margin": c.margin(sd),
                 "outcome": c.outcome(sd),
                 "groups": {g.label: (g.mean, len(g.scores)) for _, g in c.terms}} for c in conds]
        out.append({"finding": name, "paper": paper, "verdict": verdict(conds, sd), "sd": sd, "conditions": rows})
    return out


def write_findings(summary: dict, path: str | Path, title: str, judge: bool = True) -> str:
    """findings.md: the rule, the numbers and the spread behind each verdict; returns the text.
    With `judge=False` (a smoke run) the numbers are listed and every verdict is "not judged"."""
    rows = findings(summary)
    if not judge:
        rows = [{**r, "verdict": "not judged (a smoke run: too small to judge anything)"} for r in rows]
    sd = rows[0]["sd"] if rows else None
    spread = ("no point was repeated, so no spread was measured and nothing can be judged" if sd is None
              else f"the pooled run-to-run standard deviation of repeated points, each split's difficulty "
                   f"taken out (of the means too), is {100 * sd:.2f} points")
    lines = [f"# {title}: the paper's findings at this scale", "",
             f"Scores are the paper's metric ({summary['metric']}); differences are in points "
             f"(percent of val top-1). Spread: {spread}. A difference counts only beyond {Z:g} standard "
             "errors of it (the margin, ±); \"level\" means within it. A finding shows when every "
             "comparison goes its way, does not show when one goes the other way beyond the margin, "
             "and is inconclusive otherwise. The rules are in `caffe_transfer/results/findings.py`.",
             "", "| finding | verdict |", "| --- | --- |"]
    lines += [f"| {r['finding']} | {r['verdict']} |" for r in rows]
    for r in rows:
        lines += ["", f"## {r['finding']}: {r['verdict']}", "", f"- paper: {r['paper']}"]
        for c in r["conditions"]:
            margin = "" if c["margin"] is None else f" ± {100 * c['margin']:.1f}"
            groups = "; ".join(f"{label} {'n/a' if m is None else f'{m:.4f}'} ({k} runs)"
                               for label, (m, k) in c["groups"].items())
            lines.append(f"- {c['what']}: {_pp(c['value'])}{margin} points, expected {c['expected']}: "
                         f"{c['outcome']} ({groups})")
    text = "\n".join(lines) + "\n"
    write_atomic(Path(path), text)
    return text
