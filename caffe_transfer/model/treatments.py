"""The treatment model: the one place that says what each of the paper's nets is.

A treatment names a net of the experiment: a base (`baseA` = the authors' `half0A`), a transfer
(`AnB`, `BnB`, `AnB+`, ... = `transfer0A0B_1_3`, `transfer-ft0A0A_1_5`, `transfernatmanAB_1_2`),
the random-frozen net (`nolearn_1_4`), the full 1000-class net (`netbase`) or a reduced-data net
(`reduced-0250`). From it follow, per weight layer, whether the layer is copied and from which
base, frozen or fine-tuned, renamed `-new` or not, and which datasets the net trains and tests on
and whose mean it subtracts. Templates, transplant, report and scheduler all read this module and
derive nothing themselves.

Notation: `XnY` copies the first n layers of the base trained on half X into a net trained on
half Y (frozen; `XnY+` fine-tunes them). X == Y is a selffer (the paper's BnB), X != Y a
transfer (the paper's AnB). The paper's BnB and AnA are the same experiment; the authors ran the
selffers as A->A (`transfer0A0A_1_n`), so the released grid holds AnA, and `BnB` names the
B->B net the authors did not train.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.splits import HALVES, REDUCED_PER_CLASS, SPLIT_IDS

N_TRANSFERABLE = 7  # conv1..conv5, fc6, fc7; fc8 is always re-initialised


class Kind(str, Enum):
    BASE = "base"          # a net trained from scratch on one half
    TRANSFER = "transfer"  # first n layers copied from a base (selffer when source == target)
    RANDOM = "random"      # first n layers left at their random init and frozen, 1000 classes
    FULL = "full"          # the 1000-class net
    REDUCED = "reduced"    # 1000 classes, k images per class


@dataclass(frozen=True)
class LayerRole:
    """What a treatment does with one weight layer."""

    layer: str                # the architecture's layer name (conv1 .. fc8)
    name: str                 # its name in this net (`-new` when re-initialised in a transfer)
    copied_from: str | None   # the base net (folder name) its blobs come from, or None
    frozen: bool              # lr_mult 0 and decay_mult 0 on both blobs

    @property
    def renamed(self) -> bool:
        return self.name != self.layer


@dataclass(frozen=True)
class Treatment:
    kind: Kind
    split: str | None = None      # '0'..'3' or 'natman' for bases and transfers
    half: str | None = None       # the half trained on (target), 'A' or 'B'
    source: str | None = None     # transfers: the half whose base the layers come from
    n: int | None = None          # transfers and random: number of copied/frozen layers
    fine_tune: bool = False       # transfers: copied layers keep learning
    per_class: int | None = None  # reduced: images per class

    def __post_init__(self) -> None:
        _validate(self)

    # --- names -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The authors' folder name, e.g. `transfer0A0B_1_3`."""
        k = self.kind
        if k is Kind.BASE:
            return f"half{_split_word(self.split)}{self.half}"
        if k is Kind.TRANSFER:
            ft = "-ft" if self.fine_tune else ""
            if self.split == "natman":
                return f"transfer{ft}natman{self.source}{self.half}_1_{self.n}"
            return f"transfer{ft}{self.split}{self.source}{self.split}{self.half}_1_{self.n}"
        if k is Kind.RANDOM:
            return f"nolearn_1_{self.n}"
        if k is Kind.FULL:
            return "netbase"
        return f"reduced-{self.per_class:04d}"

    @property
    def notation(self) -> str:
        """The paper's notation with n filled in, e.g. `A3B+`, `baseB`, `random4`."""
        k = self.kind
        if k is Kind.BASE:
            return f"base{self.half}"
        if k is Kind.TRANSFER:
            return f"{self.source}{self.n}{self.half}{'+' if self.fine_tune else ''}"
        if k is Kind.RANDOM:
            return f"random{self.n}"
        if k is Kind.FULL:
            return "full"
        return f"reduced{self.per_class}"

    @property
    def family(self) -> str:
        """The curve this net belongs to in the paper's figures: base, BnB, BnB+, AnB, AnB+,
        random, full or reduced."""
        if self.kind is Kind.TRANSFER:
            return ("BnB" if self.selffer else "AnB") + ("+" if self.fine_tune else "")
        return self.kind.value

    @property
    def selffer(self) -> bool:
        return self.kind is Kind.TRANSFER and self.source == self.half

    def describe(self) -> str:
        where = f", split {self.split}" if self.split else ""
        return f"{self.name} ({self.notation}{where})"

    # --- data ------------------------------------------------------------------------------
    @property
    def train_set(self) -> str:
        """The dataset folder the net trains on, in the authors' list layout."""
        return self._dataset("train")

    @property
    def val_set(self) -> str:
        return "whole_valid" if self.kind is Kind.REDUCED else self._dataset("valid")

    @property
    def mean_set(self) -> str:
        """Whose mean image the net subtracts: a transfer uses its SOURCE base's."""
        return self.base.train_set if self.base else self.train_set

    def _dataset(self, subset: str) -> str:
        if self.kind in (Kind.BASE, Kind.TRANSFER):
            return f"half{_split_word(self.split)}{self.half}_{subset}"
        if self.kind is Kind.REDUCED:
            return f"reduced{self.per_class:04d}_{subset}"
        return f"whole_{subset}"

    @property
    def schedule(self) -> str:
        """Which of the authors' solvers the net uses."""
        return "reduced" if self.kind is Kind.REDUCED else "paper"

    # --- layers ----------------------------------------------------------------------------
    @property
    def base(self) -> Treatment | None:
        """The base net whose final snapshot a transfer copies from."""
        if self.kind is not Kind.TRANSFER:
            return None
        return Treatment(Kind.BASE, split=self.split, half=self.source)

    def layer_roles(self, weight_layers: list[str]) -> list[LayerRole]:
        """Role of each weight layer (in order, conv1..fc8) under this treatment."""
        if len(weight_layers) != N_TRANSFERABLE + 1:
            raise CaffeTransferError(
                f"architecture has {len(weight_layers)} weight layers: expected {N_TRANSFERABLE + 1}")
        roles = []
        for i, layer in enumerate(weight_layers, start=1):
            lower = self.n is not None and i <= self.n
            if self.kind is Kind.TRANSFER:
                roles.append(LayerRole(layer, layer if lower else f"{layer}-new",
                                       self.base.name if lower else None,
                                       lower and not self.fine_tune))
            else:
                roles.append(LayerRole(layer, layer, None, self.kind is Kind.RANDOM and lower))
        return roles


def _split_word(split: str | None) -> str:
    return "natman" if split == "natman" else str(split)


def _validate(t: Treatment) -> None:
    k = t.kind
    takes_split = k in (Kind.BASE, Kind.TRANSFER)
    needs_n = k in (Kind.TRANSFER, Kind.RANDOM)
    label = t.kind.value
    if takes_split and t.split not in SPLIT_IDS:
        raise CaffeTransferError(
            f"{label} needs a split: got {t.split!r}, expected one of {', '.join(SPLIT_IDS)}")
    if not takes_split and t.split is not None:
        raise CaffeTransferError(f"{label} trains on all 1000 classes: it takes no split (got {t.split!r})")
    if needs_n and (t.n is None or not 1 <= t.n <= N_TRANSFERABLE):
        raise CaffeTransferError(
            f"{label} needs n in 1..{N_TRANSFERABLE} (conv1..fc7): got {t.n!r}")
    if not needs_n and t.n is not None:
        raise CaffeTransferError(f"{label} takes no n (got {t.n})")
    if takes_split and t.half not in HALVES:
        raise CaffeTransferError(f"{label} needs a half A or B: got {t.half!r}")
    if k is Kind.TRANSFER:
        if t.source not in HALVES:
            raise CaffeTransferError(f"transfer needs a source half A or B: got {t.source!r}")
        if t.split == "natman" and (t.fine_tune or t.source == t.half):
            raise CaffeTransferError(
                "the natural/man-made split has only frozen transfers between the halves "
                "(AnB, BnA); got " + ("a fine-tuned net" if t.fine_tune else "a selffer"))
    elif t.fine_tune or t.source is not None:
        raise CaffeTransferError(f"{label} copies no layers: it takes no source half or '+'")
    if k is Kind.REDUCED and t.per_class not in REDUCED_PER_CLASS:
        raise CaffeTransferError(
            f"reduced-data net with {t.per_class!r} images per class: expected one of "
            + ", ".join(map(str, REDUCED_PER_CLASS)))
    if k is not Kind.REDUCED and t.per_class is not None:
        raise CaffeTransferError(f"{label} takes no images-per-class count")


# --- parsing -------------------------------------------------------------------------------
_FOLDER_PATTERNS = [
    (re.compile(r"half(?P<split>[0-3]|natman)(?P<half>[AB])"), Kind.BASE),
    (re.compile(r"transfer(?P<ft>-ft)?(?P<split>[0-3])(?P<source>[AB])(?P=split)(?P<half>[AB])_1_(?P<n>\d+)"),
     Kind.TRANSFER),
    (re.compile(r"transfer(?P<ft>-ft)?(?P<split>natman)(?P<source>[AB])(?P<half>[AB])_1_(?P<n>\d+)"),
     Kind.TRANSFER),
    (re.compile(r"nolearn_1_(?P<n>\d+)"), Kind.RANDOM),
    (re.compile(r"netbase"), Kind.FULL),
    (re.compile(r"reduced-(?P<per_class>\d+)"), Kind.REDUCED),
]
_NOTATION = re.compile(r"(?P<source>[AB])(?P<n>n|[1-7])(?P<half>[AB])(?P<ft>\+)?")
_BASE = re.compile(r"base(?P<half>[AB])")
FIRST_SPLIT = SPLIT_IDS[0]  # the paper's first random split: what a short name means without --split

VALID_NAMES = (
    "paper notation: baseA, baseB, AnB, BnA, AnA, BnB (and the fine-tuned AnB+, BnB+, ...) with "
    "--n 1..7 (or A3B, A3B+) and --split 0..3 or natman; random (or nolearn) with --n; full "
    "(or netbase); reduced-K for K in " + ", ".join(map(str, REDUCED_PER_CLASS)) + "; or an "
    "authors' folder name: half0A, halfnatmanB, transfer0A0B_1_3, transfer-ft1B1A_1_5, "
    "transfernatmanAB_1_2, nolearn_1_4, netbase, reduced-0250")


def parse(text: str, n: int | None = None, split: str | int | None = None) -> Treatment:
    """A treatment from the paper's notation (with `n` and `split`) or an authors' folder name.

    Raises CaffeTransferError, listing what is valid, for names the paper does not define.
    """
    text = text.strip()
    split = None if split is None else str(split)
    for pattern, kind in _FOLDER_PATTERNS:
        m = pattern.fullmatch(text)
        if m:
            _no_extra(text, n, split)
            g = m.groupdict()
            return Treatment(kind, split=g.get("split"), half=g.get("half"), source=g.get("source"),
                             n=int(g["n"]) if g.get("n") else None, fine_tune=bool(g.get("ft")),
                             per_class=int(g["per_class"]) if g.get("per_class") else None)
    m = _BASE.fullmatch(text)
    if m:
        return Treatment(Kind.BASE, split=split, half=m["half"], n=n)
    m = _NOTATION.fullmatch(text)
    if m:
        if m["n"] != "n":
            if n is not None and n != int(m["n"]):
                raise CaffeTransferError(f"{text!r} already says n = {m['n']}, but --n {n} was given")
            n = int(m["n"])
        return Treatment(Kind.TRANSFER, split=split, half=m["half"], source=m["source"], n=n,
                         fine_tune=bool(m["ft"]))
    if text in ("random", "nolearn"):
        return Treatment(Kind.RANDOM, n=n, split=split)
    if text == "full":
        return Treatment(Kind.FULL, n=n, split=split)
    m = re.fullmatch(r"reduced-?(\d+)", text)
    if m:
        return Treatment(Kind.REDUCED, per_class=int(m[1]), n=n, split=split)
    raise CaffeTransferError(f"unknown treatment {text!r}: expected {VALID_NAMES}")


def needs_split(text: str) -> bool:
    """Whether a name leaves its split to --split: a base or a transfer in the paper's notation
    (an authors' folder name says its own; random, full and reduced nets have none)."""
    text = text.strip()
    return bool(_BASE.fullmatch(text) or _NOTATION.fullmatch(text))


def _no_extra(text: str, n: int | None, split: str | None) -> None:
    if n is not None or split is not None:
        raise CaffeTransferError(
            f"{text!r} is a folder name and already says its n and split: drop --n/--split")


def authors_grid() -> list[Treatment]:
    """The 170 nets the authors trained and released, in a stable order (bases first)."""
    grid: list[Treatment] = []
    for split in SPLIT_IDS:
        grid += [Treatment(Kind.BASE, split=split, half=h) for h in HALVES]
    grid.append(Treatment(Kind.FULL))
    grid += [Treatment(Kind.REDUCED, per_class=k) for k in REDUCED_PER_CLASS]
    for n in range(1, N_TRANSFERABLE + 1):
        grid.append(Treatment(Kind.RANDOM, n=n))
        for split in "0123":
            pairs = [("A", "A", False), ("A", "B", False), ("B", "A", False)]
            if split in "01":
                pairs += [("A", "A", True), ("A", "B", True), ("B", "A", True)]
            grid += [Treatment(Kind.TRANSFER, split=split, source=s, half=h, n=n, fine_tune=ft)
                     for s, h, ft in pairs]
        grid += [Treatment(Kind.TRANSFER, split="natman", source=s, half=h, n=n)
                 for s, h in (("A", "B"), ("B", "A"))]
    return grid
