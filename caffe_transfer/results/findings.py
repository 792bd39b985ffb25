"""The paper's findings, one by one, judged on a report's runs (the demo's, or any grid).

The comparisons were written before any run of the demo was looked at, and are not tuned to
one; how their noise is measured was changed after the first runs (below). Each finding is a
few comparisons between groups of runs (a treatment at a range of n, or the base), with the
control the paper itself uses:

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

The noise is measured, not assumed, and each comparison carries its own. A point is one
treatment at one n (or a base); its repeats are its runs on the random splits, or on the seeds,
each random-split score taken relative to its split (`groups_of`). A group's mean is the mean of
its points' means, and its standard error comes from each point's own spread (its repeats' sample
variance over their number), never from another point's; a comparison adds its groups' variances.
Its margin is that standard error times Student's t at the Welch-Satterthwaite degrees of
freedom, at the confidence of Z = 2 standard errors of a normal: a spread measured on 2 runs is
itself a rough guess, and t widens the margin by as much as it is unsure. A comparison counts
only beyond its margin; "level" means within it. A finding "shows" when every comparison goes its
way; "does not show" when one goes the other way beyond its margin; otherwise it is
"inconclusive". A point with fewer than MIN_REPEATS runs has no spread to measure, and a side
of a comparison whose spread rests on fewer than MIN_DOF degrees of freedom (a base of 2 runs:
one difference) has one too rough to judge by (t is 14 at one degree of freedom): a finding
that compares such a side is "not judged at this scale", with that reason, rather than judged
on a spread borrowed from other points. Both depend on the design (how often each point ran),
not on the scores, so every run of a preset judges the same findings.

These margins replace one standard deviation pooled over all repeated points (the rule the demo's
first runs were judged by): a pooled spread is too narrow for the noisy points and let a rerun
of the same preset overturn verdicts (docs/demo.md).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import t as student_t

from caffe_transfer.common.atomic import write_atomic

Z = 2.0
CONFIDENCE = math.erf(Z / math.sqrt(2))  # two-sided, about 95.4%
MIN_REPEATS = 2  # the fewest runs of a point whose spread can be measured
MIN_DOF = 2      # the fewest degrees of freedom of a side of a comparison that can be judged by
RANDOM_SPLITS = ("0", "1", "2", "3")
SHOWS, NOT, INCONCLUSIVE, UNMEASURED = "shows", "does not show", "inconclusive", "not measured"
NOT_JUDGED = "not judged at this scale"


@dataclass(frozen=True)
class Group:
    """The points one side of a comparison averages (e.g. BnB at n = 3..5), each with its repeats."""

    label: str
    points: tuple[tuple[float, ...], ...]

    @property
    def runs(self) -> int:
        return sum(len(p) for p in self.points)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(statistics.fmean(p) for p in self.points) if self.points else None

    @property
    def dof(self) -> int:
        """The degrees of freedom its points' spreads rest on."""
        return sum(len(p) - 1 for p in self.points)

    @property
    def fewest(self) -> int:
        """The fewest repeats of any of its points."""
        return min((len(p) for p in self.points), default=0)

    def variances(self, sign: float) -> list[tuple[float, int]]:
        """(variance, degrees of freedom) of each point's share of `sign * mean`."""
        scale = sign / len(self.points)
        return [(scale ** 2 * statistics.variance(p) / len(p), len(p) - 1) for p in self.points]


@dataclass(frozen=True)
class Condition:
    """`sum(sign * group mean)` is expected to be "above" zero, "below" it, or "level" with it."""

    what: str
    terms: tuple[tuple[float, Group], ...]
    expected: str

    def value(self) -> float | None:
        if any(not g.points for _, g in self.terms):
            return None
        return sum(sign * g.mean for sign, g in self.terms)

    def too_few(self) -> list[str]:
        """Its groups whose spread is unmeasured or too rough to judge by, as reasons."""
        reasons = []
        for _, g in self.terms:
            per_point = " per point" * (len(g.points) > 1)
            if g.points and g.fewest < MIN_REPEATS:
                reasons.append(f"{g.label} ran {'once' if g.fewest == 1 else f'{g.fewest} times'}{per_point}")
            elif g.points and g.dof < MIN_DOF:
                reasons.append(f"{g.label} ran {g.runs} times (a spread on {g.dof} degree"
                               f"{'s' * (g.dof != 1)} of freedom)")
        return reasons

    def margin(self) -> float | None:
        """t standard errors of the value, from its own points' spreads (None: not measurable)."""
        if self.value() is None or self.too_few():
            return None
        parts = [part for sign, g in self.terms for part in g.variances(sign)]
        variance = sum(v for v, _ in parts)
        if variance == 0:
            return 0.0
        dof = variance ** 2 / sum(v ** 2 / d for v, d in parts)
        return float(student_t.ppf((1 + CONFIDENCE) / 2, dof)) * math.sqrt(variance)

    def outcome(self) -> str:
        """"holds", "contradicted" or "unclear" (within the margin, or no margin measurable)."""
        value, margin = self.value(), self.margin()
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


def verdict(conditions: list[Condition]) -> tuple[str, str]:
    """(verdict, reason): the reason says why a finding is not judged, else it is empty."""
    outcomes = [c.outcome() for c in conditions]
    if UNMEASURED in outcomes:
        return UNMEASURED, ""
    too_few = list(dict.fromkeys(r for c in conditions for r in c.too_few()))
    if too_few:
        return NOT_JUDGED, (f"{', '.join(too_few)}; a spread needs at least {MIN_REPEATS} runs of every "
                            f"point compared and {MIN_DOF} degrees of freedom on each side")
    if "contradicted" in outcomes:
        return NOT, ""
    if all(o == "holds" for o in outcomes):
        return SHOWS, ""
    return INCONCLUSIVE, ""


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


def conditions(summary: dict) -> dict[str, tuple[str, list[Condition]]]:
    """Finding -> (the paper's result, the comparisons that judge it here), on scores relative to
    their split (the same means as the raw scores' where every point has run on every split)."""
    groups = groups_of(summary, within_split=True)
    base_half = summary.get("base_half")

    def pick(label: str, family: str, kind: str = "halves", half: str | None = None, ns=(None,)) -> Group:
        return Group(label, tuple(tuple(v) for (f, k, h, n), v in groups.items()
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
    natman = [pair for pair in natman if pair[1].points] or natman[1:]
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
    """[{finding, paper, verdict, reason, conditions: [{what, expected, value, margin, outcome, groups}]}]."""
    out = []
    for name, (paper, conds) in conditions(summary).items():
        rows = [{"what": c.what, "expected": c.expected, "value": c.value(), "margin": c.margin(),
                 "outcome": c.outcome(),
                 "groups": {g.label: (g.mean, g.runs) for _, g in c.terms}} for c in conds]
        judged, reason = verdict(conds)
        out.append({"finding": name, "paper": paper, "verdict": judged, "reason": reason, "conditions": rows})
    return out


def write_findings(summary: dict, path: str | Path, title: str, judge: bool = True) -> str:
    """findings.md: the rule, the numbers and the margin behind each verdict; returns the text.
    With `judge=False` (a smoke run) the numbers are listed and every verdict is "not judged"."""
    rows = findings(summary)
    if not judge:
        rows = [{**r, "verdict": "not judged (a smoke run: too small to judge anything)", "reason": ""}
                for r in rows]
    lines = [f"# {title}: the paper's findings at this scale", "",
             f"Scores are the paper's metric ({summary['metric']}); differences are in points "
             "(percent of val top-1), each random split's difficulty taken out. Each comparison's margin "
             "(±) comes from the spread of its own points' repeats (each point's runs on the splits or "
             "seeds): its standard error times Student's t at its degrees of freedom, at the "
             f"{100 * CONFIDENCE:.1f}% confidence of {Z:g} standard errors. A difference counts only beyond "
             "its margin; \"level\" means within it. A finding shows when every comparison goes its way, "
             "does not show when one goes the other way beyond its margin, and is inconclusive "
             f"otherwise; it is {NOT_JUDGED} when a point it compares ran fewer than {MIN_REPEATS} times "
             f"(no spread measured) or a side of a comparison has a spread on fewer than {MIN_DOF} degrees "
             "of freedom (too rough to judge by). "
             "The rules are in `caffe_transfer/results/findings.py`.",
             "", "| finding | verdict |", "| --- | --- |"]
    lines += [f"| {r['finding']} | {r['verdict']}" + (f" ({r['reason']})" if r["reason"] else "") + " |"
              for r in rows]
    for r in rows:
        lines += ["", f"## {r['finding']}: {r['verdict']}", "", f"- paper: {r['paper']}"]
        if r["reason"]:
            lines.append(f"- why: {r['reason']}")
        for c in r["conditions"]:
            margin = "" if c["margin"] is None else f" ± {100 * c['margin']:.1f}"
            groups = "; ".join(f"{label} {'n/a' if m is None else f'{m:.4f}'} ({k} run{'s' * (k != 1)})"
                               for label, (m, k) in c["groups"].items())
            lines.append(f"- {c['what']}: {_pp(c['value'])}{margin} points, expected {c['expected']}: "
                         f"{c['outcome']} ({groups})")
    text = "\n".join(lines) + "\n"
    write_atomic(Path(path), text)
    return text
