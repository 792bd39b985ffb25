"""The paper's numbers beside a report's: the parser's check on the authors' logs, and a user's
own runs judged by the authors' run-to-run spread.

`paper_numbers.json` holds every number of EXPERIMENT.md's "Numbers" section with its path in a
report summary, the paper's value and the one recomputed from the released logs. Tolerances of
0.001 and 0.002 check the parser on the authors' own logs; a fresh run differs from theirs by
run-to-run noise (their 8 bases spread with an SD of 0.0055), so it is judged by that spread,
as `curves.spread` gives it per kind of run.
"""

from __future__ import annotations

import json
from pathlib import Path

from caffe_transfer.results import curves
from caffe_transfer.results.findings import Z

PAPER_NUMBERS = Path(__file__).with_name("paper_numbers.json")


def _lookup(summary: dict, path: list):
    value = summary
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def authors_kind(path: list) -> str:
    """The kind of the authors' runs a summary number aggregates (see `curves.kind_of`); for
    differences of aggregates (Table 1, drops) the 8 bases, whose spread the others are judged by."""
    head = path[0]
    if head == "full_net":
        return "full"
    if head == "layers":
        return f"{path[1]} n={path[2] + 1}"
    if head == "natman":
        half = {"target_manmade": "B", "target_natural": "A"}[path[1]]  # the authors' A is natural
        return f"base natman {half}" if path[2] == "base" else f"natman AnB to {half} n={path[3] + 1}"
    if head == "random":
        return f"random n={path[2] + 1}"
    if head == "reduced":
        return f"reduced {path[1]}"
    return curves.BASES


def compare_with_paper(summary: dict, numbers_file: Path = PAPER_NUMBERS) -> list[dict]:
    """One row per number in EXPERIMENT.md's "Numbers" section: the paper's value and the value
    recomputed from the released logs (where stated), ours, the differences, and whether ours is
    within the stated tolerance of each (a check of the parser on the authors' own logs).

    A user's own runs are judged by the authors' run-to-run spread instead: `within_spread` says
    whether ours is within `Z` standard deviations of the authors' runs of that treatment and n
    (of the 8 bases where they ran one) from the recomputed value (the paper's where none)."""
    spec = json.loads(numbers_file.read_text())
    rows = []
    for entry in spec["numbers"]:
        ours = _lookup(summary, entry["path"])
        row = {"id": entry["id"], "what": entry["what"], "ours": ours}
        for ref in ("paper", "recomputed"):
            value = entry.get(ref)
            tol = spec["tolerance"][ref] if ref != "paper" else entry.get("paper_tolerance", spec["tolerance"]["paper"])
            row[ref] = value
            row[f"diff_{ref}"] = None if ours is None or value is None else ours - value
            row[f"within_{ref}"] = None if value is None or ours is None else abs(ours - value) <= tol + 1e-12
            row[f"tolerance_{ref}"] = tol if value is not None else None
        kind = authors_kind(entry["path"])
        _, sd, count = curves.spread(kind)
        ref = entry.get("recomputed", entry.get("paper"))
        row.update(authors_kind=kind, authors_sd=sd, authors_runs=count,
                   within_spread=None if ours is None or sd is None else abs(ours - ref) <= Z * sd)
        rows.append(row)
    return rows
