"""The GPU check's measured rates (`gpu_check.json`, schema caffe-transfer/gpu-check/1), read,
checked and turned into a price per net: `plan --rates FILE`.

One rate for every net overprices the grid: a frozen transfer computes no gradients below its
copied layers, a base computes them all. The check measures, on one GPU, ms per training
iteration through Caffe's DataLayer of a base, frozen transfers at a few n and a fine-tuned
transfer, each net's GPU memory, and the aggregate ms per iteration of k nets of a kind trained at
once. The price of a run is its kind's rate (frozen and fine-tuned: interpolated in n between the
measured n, clamped at the ends; selffers are frozen or fine-tuned like any transfer; the
random-frozen nets are frozen ones; the full and reduced nets train every layer, like a base),
times packing[kind', N] / packing[kind', 1] when N nets share a GPU, kind' being "frozen" for
frozen nets and "base" for the others. That is GPU time per iteration: N runs at once each take
N times as long in wall-clock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.grid.plan import estimate, plan_runs
from caffe_transfer.model.treatments import Kind, Treatment, parse

SCHEMA = "caffe-transfer/gpu-check/1"
KINDS = ("base", "frozen", "finetuned")
PACKING_KINDS = ("base", "frozen")


@dataclass(frozen=True)
class Rate:
    """One net alone on the GPU: ms per iteration through the DataLayer, and its GPU memory."""

    n: int | None
    ms: float
    mib: int | None


@dataclass(frozen=True)
class Rates:
    path: Path
    architecture: str
    device: str
    memory_mib: int | None
    data_threads: int
    alone: dict[str, list[Rate]]             # kind -> its rates, by n
    packing: dict[tuple[str, int], float]    # (kind', nets) -> aggregate ms per iteration
    recommended: int

    def check(self, architecture: str, nets_per_gpu: int, treatments: list[Treatment]) -> None:
        """Refuse a plan these rates cannot price: another architecture, a kind or a packing
        the check did not measure, or more nets than fit in the GPU's memory."""
        if architecture != self.architecture:
            raise CaffeTransferError(f"{self.path} measured {self.architecture}, the plan is {architecture}: "
                                     f"run the GPU check for {architecture}, or plan with --arch {self.architecture}")
        kinds = {rate_kind(t) for t in treatments}
        for kind in sorted(kinds):
            if not self.alone.get(kind):
                raise CaffeTransferError(f"{self.path} has no rate for {kind} nets, which the plan holds: "
                                         f"it measured {', '.join(sorted(self.alone)) or 'none'}")
            self._factor(packing_kind(kind), nets_per_gpu)
        need = max((r.mib for k in kinds for r in self.alone[k] if r.mib is not None), default=None)
        if need is not None and self.memory_mib is not None and nets_per_gpu * need > self.memory_mib:
            raise CaffeTransferError(
                f"{nets_per_gpu} nets per GPU of up to {need} MiB each need {nets_per_gpu * need} MiB, the "
                f"GPU ({self.device}) has {self.memory_mib} MiB as {self.path} says: use --nets-per-gpu "
                f"{max(1, self.memory_mib // need)} or fewer")

    def seconds(self, treatment: Treatment, nets_per_gpu: int) -> float:
        """GPU seconds per iteration of `treatment` when `nets_per_gpu` nets share each GPU."""
        kind = rate_kind(treatment)
        alone = _interpolate(self.alone[kind], treatment.n)
        return alone * self._factor(packing_kind(kind), nets_per_gpu) / 1000

    def _factor(self, kind: str, nets: int) -> float:
        """What sharing the GPU with nets - 1 others does to a net's GPU time per iteration."""
        if nets == 1:
            return 1.0
        measured = sorted(k for (c, k) in self.packing if c == kind)
        if nets not in measured or 1 not in measured:
            raise CaffeTransferError(
                f"{nets} {kind} nets per GPU were not measured by the check ({self.path} has "
                f"{', '.join(map(str, measured)) or 'no packing'}): use --nets-per-gpu "
                f"{' or '.join(str(k) for k in measured) or '1'}")
        return self.packing[kind, nets] / self.packing[kind, 1]


def price(rates: Rates, architecture: str, treatments: list[Treatment], gpus: int, nets_per_gpu: int,
          solver: dict | None = None) -> dict:
    """`plan.estimate`'s GPU-hours and wall-clock on `gpus` GPUs of `treatments`, each run priced
    by its kind's rate at `nets_per_gpu`: what `plan --rates` prints and the GPU check reports of
    its own file. Rates that cannot price them are refused (`Rates.check`)."""
    rates.check(architecture, nets_per_gpu, treatments)
    return estimate(plan_runs(treatments, solver), lambda r: rates.seconds(parse(r.name), nets_per_gpu), gpus,
                    nets_per_gpu)


def rate_kind(treatment: Treatment) -> str:
    """Which measured kind prices a net: base, frozen or fine-tuned."""
    if treatment.kind is Kind.TRANSFER:
        return "finetuned" if treatment.fine_tune else "frozen"
    return "frozen" if treatment.kind is Kind.RANDOM else "base"


def packing_kind(kind: str) -> str:
    """Whose packing measurement applies: frozen nets are measured packed, the rest as bases."""
    return "frozen" if kind == "frozen" else "base"


def _interpolate(rates: list[Rate], n: int | None) -> float:
    """The rate at n, linear between the measured n and clamped at the ends; a base has one."""
    points = sorted((r.n, r.ms) for r in rates if r.n is not None)
    if n is None or not points:
        return rates[0].ms
    if n <= points[0][0]:
        return points[0][1]
    for (n0, ms0), (n1, ms1) in zip(points, points[1:]):
        if n <= n1:
            return ms0 + (ms1 - ms0) * (n - n0) / (n1 - n0)
    return points[-1][1]


def read_rates(path: str | Path) -> Rates:
    """The check's JSON at `path`, each field checked; anything else is a one-line error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith(SCHEMA.rsplit("/", 1)[0] + "/"):
        raise CaffeTransferError(f"{path} is not the GPU check's JSON (expected \"schema\": \"{SCHEMA}\", "
                                 "as tools/gpu_check.sh writes gpu_check.json)")
    if schema != SCHEMA:
        raise CaffeTransferError(f"{path} has schema {schema!r}: expected {SCHEMA!r} (a check of another "
                                 "version of caffe-transfer: run this version's tools/gpu_check.sh)")
    field = _Fields(path)
    device = field.get(data, "device", dict)
    alone: dict[str, list[Rate]] = {}
    for i, entry in enumerate(field.get(data, "rates", list)):
        where = f"rates[{i}]"
        kind = field.choice(entry, "kind", KINDS, where)
        n = field.get(entry, "n", int, where, none=True)
        if (n is None) != (kind == "base"):
            raise CaffeTransferError(f"{path}: {where}.n is {n}: expected null for a base, 1 or more otherwise")
        alone.setdefault(kind, []).append(Rate(n, field.positive(entry, "datalayer_ms", where),
                                               field.get(entry, "gpu_mib", int, where, none=True)))
    packing = {}
    for i, entry in enumerate(field.get(data, "packing", list)):
        where = f"packing[{i}]"
        kind = field.choice(entry, "kind", PACKING_KINDS, where)
        nets = field.get(entry, "nets", int, where)
        if nets < 1:
            raise CaffeTransferError(f"{path}: {where}.nets is {nets}: expected 1 or more")
        packing[kind, nets] = field.positive(entry, "aggregate_ms", where)
    return Rates(path, field.get(data, "architecture", str), str(device.get("name", "?")),
                 field.get(device, "memory_mib", int, "device", none=True), field.get(data, "data_threads", int),
                 alone, packing, field.get(data, "recommended_nets_per_gpu", int))


class _Fields:
    """Typed reads of the JSON's fields, each failure one line naming the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def get(self, holder, key: str, kind: type, where: str = "", none: bool = False):
        name = f"{where}.{key}" if where else key
        if not isinstance(holder, dict) or key not in holder:
            raise CaffeTransferError(f"{self.path}: no {name}: expected the GPU check's {SCHEMA} fields")
        value = holder[key]
        if value is None and none:
            return None
        boolean = isinstance(value, bool)  # JSON's true is no number here, though Python's bool is an int
        if kind is float and isinstance(value, int) and not boolean:
            value = float(value)
        if not isinstance(value, kind) or (boolean and kind is not bool):
            raise CaffeTransferError(f"{self.path}: {name} is {value!r}: expected {'null or ' if none else ''}"
                                     f"{'a list' if kind is list else 'an object' if kind is dict else kind.__name__}")
        return value

    def positive(self, holder, key: str, where: str) -> float:
        value = self.get(holder, key, float, where)
        if not 0 < value < float("inf"):
            raise CaffeTransferError(f"{self.path}: {where}.{key} is {value}: expected ms above 0")
        return value

    def choice(self, holder, key: str, choices: tuple[str, ...], where: str) -> str:
        value = self.get(holder, key, str, where)
        if value not in choices:
            raise CaffeTransferError(f"{self.path}: {where}.{key} is {value!r}: expected one of {', '.join(choices)}")
        return value
