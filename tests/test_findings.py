"""The verdict rules of findings.md on constructed scores: the paper's pattern shows, its
opposite does not, a difference inside its own points' spread is inconclusive, and a point run
too few times to measure a spread leaves its findings not judged."""

from __future__ import annotations

import statistics

import pytest
from scipy.stats import t as student_t

from caffe_transfer.results import findings as f

# Four repeats per point unless told, spread around the point's value with sample SD `SD`.
REPEATS = 4
SD = 0.005
PAPER = {  # the paper's per-layer means (EXPERIMENT.md), n = 1..7
    "BnB": (.627, .624, .621, .605, .594, .619, .623),
    "AnB": (.628, .624, .619, .600, .578, .581, .543),
    "BnB+": (.618, .622, .631, .629, .630, .628, .627),
    "AnB+": (.637, .636, .643, .640, .645, .646, .647),
    "random": (.4917, .4026, .0011, .0191, .0499, .0145, .0146),
}


def _repeats(value: float, sd: float, turn: int = 0, count: int = REPEATS) -> list[float]:
    """`count` scores around `value` with sample SD `sd`; `turn` rotates which split gets which
    offset, so that the noise is no split's difficulty."""
    if count == 1:
        return [value]
    offsets = [i - (count - 1) / 2 for i in range(count)]
    scale = sd / statistics.stdev(offsets)
    turn %= count
    return [value + o * scale for o in offsets[turn:] + offsets[:turn]]


def summary(layers: dict | None = None, base: float = .625, full: float = .5763, natman=(.5372, .2914),
            sd: float = SD, repeats: bool = True, easier: dict | None = None, noisy: dict | None = None,
            runs_of: dict | None = None) -> dict:
    """A report summary's runs: bases and transfers on splits 0..3 (or one split), target half B;
    the dissimilar split's base and AnB n=7 towards B; the full net and the random-frozen nets.
    `easier` adds to every score of a split (its halves' difficulty); `noisy` gives some points,
    by (family, n), their own SD; `runs_of` gives some families fewer runs than 4."""
    layers = {**PAPER, **(layers or {})}
    runs = []

    def add(family, n, value, split=None, half=None):
        spread = (noisy or {}).get((family, n), sd)
        count = (runs_of or {}).get(family, REPEATS) if repeats else 1
        values = _repeats(value, spread, len(runs) // REPEATS, count)
        splits = [split] * len(values) if split in (None, "natman") else ["0", "1", "2", "3"][:len(values)]
        runs.extend({"family": family, "n": n, "split": s, "half": half, "score": v + (easier or {}).get(s, 0)}
                    for s, v in zip(splits, values))

    add("base", None, base, "0", "B")
    for family in ("BnB", "AnB", "BnB+", "AnB+"):
        for n, v in enumerate(layers[family], 1):
            add(family, n, v, "0", "B")
    add("base", None, natman[0], "natman", "B")
    add("AnB", 7, natman[1], "natman", "B")
    add("full", None, full)
    for n, v in enumerate(layers["random"], 1):
        add("random", n, v)
    return {"metric": "top-10 mean", "base_half": "B", "runs": runs}


def verdicts(s: dict) -> dict[str, str]:
    return {r["finding"]: r["verdict"] for r in f.findings(s)}


def test_the_papers_numbers_show_every_finding():
    assert set(verdicts(summary()).values()) == {f.SHOWS}


def test_a_boost_over_the_base_but_under_bnb_plus_does_not_show():
    """The issue's run: AnB+ over the base but 1.6 points under BnB+ (which trained as long)."""
    bnbp = tuple(v + 0.016 for v in PAPER["AnB+"])
    tight = verdicts(summary({"BnB+": bnbp}, sd=0.003))
    assert tight["Transfer plus fine-tuning generalizes better"] == f.NOT
    loose = verdicts(summary({"BnB+": bnbp}, sd=0.05))
    assert loose["Transfer plus fine-tuning generalizes better"] == f.INCONCLUSIVE


def test_single_runs_judge_nothing(tmp_path):
    assert set(verdicts(summary(repeats=False)).values()) == {f.NOT_JUDGED}
    text = f.write_findings(summary(repeats=False), tmp_path / "findings.md", "t")
    assert "| Fragile co-adaptation | not judged at this scale (BnB n=3..5 ran once per point, baseB ran once" in text
    assert "a spread needs at least 2 runs of every point compared and 2 degrees of freedom on each side" in text


def test_a_point_run_once_is_not_judged_on_another_points_spread(tmp_path):
    """The full net ran once (one seed), every other point four times: the random filters'
    finding is not judged, whatever the other points' spread; the others are judged as before."""
    once = verdicts(summary(runs_of={"full": 1}))
    assert once.pop("Random frozen filters are poor") == f.NOT_JUDGED
    assert set(once.values()) == {f.SHOWS}
    text = f.write_findings(summary(runs_of={"full": 1}), tmp_path / "findings.md", "t")
    assert ("- why: full net ran once; a spread needs at least 2 runs of every point compared and 2 degrees "
            "of freedom on each side") in text
    assert "- full net minus random n=3..7: +55.6 points, expected above: unclear (full net 0.5763 (1 run);" in text


def test_a_base_of_two_runs_is_too_rough_to_judge_by():
    """The standard preset's design: the base ran on 2 splits, so its spread is one difference
    (1 degree of freedom). Every finding compared with it is not judged, however its scores
    fall; groups of several n of 2 runs each (AnB, BnB at n = 5..7: 3 degrees of freedom) are."""
    two = verdicts(summary(runs_of={"base": 2}))
    assert {k for k, v in two.items() if v == f.NOT_JUDGED} == {
        "Fragile co-adaptation", "Transfer plus fine-tuning generalizes better", "Dissimilar tasks transfer worse"}
    assert two["Specificity of higher layers"] == two["Random frozen filters are poor"] == f.SHOWS
    reason = {r["finding"]: r["reason"] for r in f.findings(summary(runs_of={"base": 2}))}
    assert reason["Fragile co-adaptation"].startswith("baseB ran 2 times (a spread on 1 degree of freedom);")
    halves = summary({"AnB": PAPER["BnB"]}, runs_of={"base": 2, "AnB": 2, "BnB": 2})
    assert verdicts(halves)["Specificity of higher layers"] == f.INCONCLUSIVE


def test_a_noisy_point_widens_its_own_margins_only():
    """BnB+ at n = 7 scatters (SD 15 points over its 4 runs) around a mean 30 points high, which
    puts the BnB+ mean 2.7 points over AnB+'s. A spread pooled over all points (SD 2.4) would call
    the boost contradicted; the comparison's own margin holds it unclear. The same means with a
    quiet point are a contradiction, and the noisy point leaves the other findings as they were."""
    high = PAPER["BnB+"][:6] + (PAPER["BnB+"][6] + 0.30,)
    noisy = verdicts(summary({"BnB+": high}, noisy={("BnB+", 7): 0.15}))
    assert noisy.pop("Transfer plus fine-tuning generalizes better") == f.INCONCLUSIVE
    assert set(noisy.values()) == {f.SHOWS}
    quiet = verdicts(summary({"BnB+": high}))
    assert quiet["Transfer plus fine-tuning generalizes better"] == f.NOT


def test_a_difference_inside_the_spread_is_inconclusive():
    assert set(verdicts(summary(sd=0.06)).values()) - {f.SHOWS} == {f.INCONCLUSIVE}


def test_co_adaptation_needs_the_dip_in_the_middle_and_none_at_the_ends():
    # the training-length confound: BnB above the base at every n
    above = verdicts(summary({"BnB": (.66,) * 7}))
    assert above["Fragile co-adaptation"] == f.NOT
    # below the base everywhere: worse transfers, not a dip that recovers
    below = verdicts(summary({"BnB": (.58,) * 7}))
    assert below["Fragile co-adaptation"] == f.NOT


def test_specificity_needs_a_gap_that_grows():
    flat = tuple(v - 0.03 for v in PAPER["BnB"])  # AnB 3 points under BnB at every n: no growth
    assert verdicts(summary({"AnB": flat}))["Specificity of higher layers"] == f.INCONCLUSIVE
    over = tuple(v + 0.03 for v in PAPER["BnB"])
    assert verdicts(summary({"AnB": over}))["Specificity of higher layers"] == f.NOT


def test_random_filters_must_cost_little_low_down():
    costly = (.01, .01, .01, .02, .05, .01, .01)  # as bad at n = 1..2 as from n = 3
    assert verdicts(summary({"random": costly}))["Random frozen filters are poor"] != f.SHOWS
    low_only = (.40, .40, .57, .57, .57, .57, .57)  # the cost is at n = 1..2 only
    assert verdicts(summary({"random": low_only}))["Random frozen filters are poor"] == f.NOT


def test_the_dissimilar_split_must_drop_more():
    assert verdicts(summary(natman=(.5372, .5372 - 0.02)))["Dissimilar tasks transfer worse"] == f.NOT
    assert verdicts(summary(natman=(.5372, .5372 - 0.08)))["Dissimilar tasks transfer worse"] == f.INCONCLUSIVE


def test_a_margin_is_t_times_the_standard_error_of_its_own_points():
    """Two points of 3 runs (variances 1 and 4) against one of 3 runs (variance 1): the difference
    of the means has variance (1/3 + 4/3) / 4 + 1/3 = 3/4, and Welch-Satterthwaite degrees of
    freedom (3/4)^2 / ((1/12)^2/2 + (1/3)^2/2 + (1/3)^2/2)."""
    pair = f.Group("pair", ((1.0, 2.0, 3.0), (10.0, 12.0, 14.0)))
    other = f.Group("other", ((5.0, 6.0, 7.0),))
    c = f.Condition("pair minus other", ((1, pair), (-1, other)), "above")
    assert c.value() == pytest.approx((2.0 + 12.0) / 2 - 6.0)
    dof = (3 / 4) ** 2 / ((1 / 12) ** 2 / 2 + (1 / 3) ** 2 / 2 + (1 / 3) ** 2 / 2)
    assert c.margin() == pytest.approx(student_t.ppf((1 + f.CONFIDENCE) / 2, dof) * (3 / 4) ** 0.5)
    for rough in (((5.0,),), ((5.0, 7.0),)):  # no spread; a spread on 1 degree of freedom
        assert f.Condition("rough", ((1, pair), (-1, f.Group("rough", rough))), "above").margin() is None


def test_findings_md_states_rule_numbers_and_margins(tmp_path):
    text = f.write_findings(summary(), tmp_path / "findings.md", "demo")
    assert text.count("\n## ") == 5 and "- why:" not in text
    assert "Each comparison's margin (±) comes from the spread of its own points' repeats" in text
    # 28 points of 4 runs, SD 0.5 points: a standard error of 0.5 / sqrt(28 * 4 / 2) points, 42 dof
    assert "- AnB+ minus BnB+ at n=1..7: +1.6 ± 0.3 points, expected above: holds" in text


def test_a_splits_difficulty_is_not_noise():
    """Split 1's halves 15 points easier for every net: the comparisons within splits are as sure."""
    easier = summary(easier={"1": 0.15})
    assert statistics.stdev(f.groups_of(easier)[("base", "halves", "B", None)]) > 0.05
    margins = [[c["margin"] for c in r["conditions"]] for r in f.findings(easier)]
    assert margins == [[pytest.approx(c["margin"]) for c in r["conditions"]] for r in f.findings(summary())]
    assert verdicts(easier) == verdicts(summary())


def test_a_smoke_run_judges_nothing(tmp_path):
    text = f.write_findings(summary(), tmp_path / "findings.md", "quick", judge=False)
    assert f.SHOWS + " |" not in text and text.count("| not judged (a smoke run") == 5
