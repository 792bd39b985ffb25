"""The paper's class splits: which classes form each half, by the authors' exact rules.

Random halves: `numpy.random.seed([s])` (a one-element list; the plain int gives other
splits), then A = the sorted `numpy.random.choice(arange(K), K // 2, replace=False)`, B = the rest.
Natural/man-made: the index sets shipped in `splits/`; following the authors' folders, half A is
natural (`halfnatmanA`) and half B man-made (`halfnatmanB`), although the paper's text calls
man-made "A".
"""

from __future__ import annotations

import numpy as np

from .errors import CaffeTransferError
from .resources import resource_dir

SPLIT_IDS = ("0", "1", "2", "3", "natman")
HALVES = ("A", "B")
IMAGENET_CLASSES = 1000


def random_halves(seed: int, num_classes: int = IMAGENET_CLASSES) -> tuple[list[int], list[int]]:
    """Halves A and B of `num_classes` classes for seed `seed`, by the authors' seeding rule."""
    np.random.seed([seed])
    a = sorted(int(i) for i in np.random.choice(np.arange(num_classes), num_classes // 2, replace=False))
    chosen = set(a)
    return a, [i for i in range(num_classes) if i not in chosen]


def _read_indices(name: str) -> list[int]:
    text = (resource_dir("splits") / name).read_text()
    return [int(line) for line in text.split("\n") if line.strip() and not line.startswith("#")]


def natman_halves() -> tuple[list[int], list[int]]:
    """(natural, man-made) ILSVRC2012 class indices: the authors' halfnatmanA and halfnatmanB."""
    return _read_indices("natman_natural.txt"), _read_indices("natman_manmade.txt")


def half_classes(split: str, half: str) -> list[int]:
    """The ILSVRC2012 classes of half `half` ('A' or 'B') of split `split` ('0'..'3' or 'natman')."""
    if half not in HALVES:
        raise CaffeTransferError(f"half {half!r}: expected A or B")
    if split == "natman":
        halves = natman_halves()
    elif split in SPLIT_IDS:
        halves = random_halves(int(split))
    else:
        raise CaffeTransferError(f"split {split!r}: expected one of {', '.join(SPLIT_IDS)}")
    return halves[HALVES.index(half)]
