"""The scaled-down reproduction: the paper's pipeline on Fashion-MNIST, on a laptop's CPU.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package (10 classes of clothing, shoes
and bags, 28x28 grey); nothing is downloaded. It is exported once to an image tree, then goes
through the same functions the commands run on ImageNet: whole lists, class splits (random 5/5
halves by the paper's seeding rule, and a dissimilar split, garments vs footwear and bags, in the
place of natural vs man-made), LMDBs and means, run folders of the small architecture, training
(bases before transfers, on all cores), transplant, and the report. Every step is resumable: a
demo run again continues where it stopped and never retrains a finished run.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.data.lists import write_whole_lists
from caffe_transfer.data.lmdb import BuildOptions, build
from caffe_transfer.data.splits import random_halves, split_datasets, write_splits
from caffe_transfer.grid.scheduler import GridResult, run_grid
from caffe_transfer.model.architectures import architecture
from caffe_transfer.model.treatments import N_TRANSFERABLE, Kind, Treatment
from caffe_transfer.runs.gen import GenOptions, write_runs

FASHION_MNIST = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
PACKAGE = "dataset-fashion-mnist"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
GARMENTS = (0, 1, 2, 3, 4, 6)      # the dissimilar split's half A (in the place of "natural")
FOOTWEAR_AND_BAGS = (5, 7, 8, 9)   # half B (in the place of "man-made")
ARCH = architecture("small", len(CLASSES))  # the demo's net: its image size and val batch


@dataclass(frozen=True)
class Preset:
    """One size of the demo. Every point of its figures is repeated: the runs on random halves
    once per split in `splits` (the paper's seeding rule), the dissimilar split's, random-frozen
    and full nets once per solver seed in `seeds`. Every net trains `solver`'s stepped schedule
    (a transfer on its base's) and every test scores the whole val set."""

    name: str
    train_per_class: int
    test_per_class: int
    solver: dict
    splits: tuple[str, ...]
    seeds: int = 1
    dissimilar: bool = False  # the garments vs footwear-and-bags transfers
    random: bool = False      # the random-frozen nets and the full net they are compared with
    judges: bool = True       # False: a smoke run, whose findings.md judges nothing


def _schedule(max_iter: int, stepsize: int, test_interval: int) -> dict:
    return {"max_iter": max_iter, "stepsize": stepsize, "gamma": 0.1, "lr_policy": "step",
            "test_interval": test_interval, "snapshot": max_iter, "display": test_interval}


PRESETS = {
    # Schedules from measured curves of baseB on split 0 (docs/demo.md): at base_lr 0.01 the small
    # net's val accuracy rises steeply for about 200 iterations, slowly to about 2000 and is flat
    # after, and flat within 100 iterations of a step down by 10. The standard preset steps where its
    # budget (15 minutes on 2 cores with the Caffe build) allows, long after the flat part begins.
    "quick": Preset("quick", 100, 20, _schedule(40, 30, 10), splits=("0",), judges=False),
    "standard": Preset("standard", 200, 100, _schedule(1400, 1100, 50), splits=("0", "1"),
                       dissimilar=True, random=True),
    "long": Preset("long", 1000, 200, _schedule(4000, 3200, 100), splits=("0", "1", "2", "3"),
                   seeds=4, dissimilar=True, random=True),
}


def grid(preset: Preset) -> dict[str, list[Treatment]]:
    """The demo's runs by folder under `runs/`: `halves` (per split: bases, BnB, BnB+, AnB, AnB+
    for n = 1..7 towards half B) and, per preset, `seed<k>` (the dissimilar split's bases and AnB,
    the random-frozen nets and the full net, once per seed)."""
    layers = range(1, N_TRANSFERABLE + 1)
    halves = []
    for split in preset.splits:
        halves += [Treatment(Kind.BASE, split=split, half=h) for h in "AB"]
        halves += [Treatment(Kind.TRANSFER, split=split, source=s, half="B", n=n, fine_tune=ft)
                   for n in layers for s in "BA" for ft in (False, True)]
    seeded = []
    if preset.dissimilar:
        seeded += [Treatment(Kind.BASE, split="natman", half=h) for h in "AB"]
        seeded += [Treatment(Kind.TRANSFER, split="natman", source="A", half="B", n=n) for n in layers]
    if preset.random:
        seeded += [Treatment(Kind.FULL)] + [Treatment(Kind.RANDOM, n=n) for n in layers]
    runs = {"halves": halves}
    runs.update({f"seed{k}": seeded for k in range(1, preset.seeds + 1) if seeded})
    return runs


# --- data ------------------------------------------------------------------------------------
def _idx(path: Path, offset: int) -> np.ndarray:
    try:
        return np.frombuffer(gzip.decompress(path.read_bytes()), dtype=np.uint8, offset=offset)
    except OSError as e:
        raise CaffeTransferError(f"cannot read {path}: {e}") from None


def _source_files(source: Path) -> dict[str, tuple[Path, Path]]:
    files = {subset: (source / f"{stem}-images-idx3-ubyte.gz", source / f"{stem}-labels-idx1-ubyte.gz")
             for subset, stem in (("train", "train"), ("test", "t10k"))}
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        raise CaffeTransferError(f"Fashion-MNIST not found ({missing[0]} is missing): install Debian's "
                                 f"{PACKAGE} (apt-get install {PACKAGE}) or set FASHION_MNIST_DIR")
    return files


def export_images(source: Path, out: Path, preset: Preset) -> Path:
    """The first k images of each class as PNG files in `out/{train,test}/<index>-<name>/`."""
    from PIL import Image

    done = out / "COMPLETE"
    if done.is_file():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for subset, (images_path, labels_path) in _source_files(source).items():
        labels = _idx(labels_path, 8)
        images = _idx(images_path, 16).reshape(len(labels), 28, 28)
        keep = preset.train_per_class if subset == "train" else preset.test_per_class
        for c, name in enumerate(CLASSES):
            folder = partial / subset / f"{c}-{name}"
            folder.mkdir(parents=True)
            for i in np.flatnonzero(labels == c)[:keep]:
                Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    partial.rename(out)
    write_atomic(done, f"{preset.train_per_class} train and {preset.test_per_class} test images per class\n")
    return out


def datasets(preset: Preset) -> dict[str, list[int]]:
    """Dataset name -> classes, in the authors' layout (`half0A`, `halfnatmanB`, `whole`)."""
    sets = {}
    for split in preset.splits:
        sets.update(split_datasets(split, *random_halves(int(split), len(CLASSES))))
    sets.update(split_datasets("natman", list(GARMENTS), list(FOOTWEAR_AND_BAGS)))
    sets["whole"] = list(range(len(CLASSES)))
    return sets


def prepare_data(out: Path, preset: Preset, progress: bool = True) -> Path:
    """Images, lists, splits, LMDBs and means under `out/data`; returns that folder."""
    data = out / "data"
    images = export_images(FASHION_MNIST, data / "images", preset)
    lists = data / "lists"
    write_whole_lists(images / "train", images / "test", lists)
    sets = datasets(preset)
    for subset, whole in (("train", "whole_train.txt"), ("valid", "whole_valid.txt")):
        write_splits(lists / whole, subset, data, custom=sets, num_classes=len(CLASSES), reduced=())
    for name in sets:
        for subset, root in (("train", "train"), ("valid", "test")):
            folder = data / f"{name}_{subset}"
            build(folder / "files.txt", images / root, folder,
                  BuildOptions(resize=ARCH.image_size, gray=True), progress=progress)
    return data


# --- runs ------------------------------------------------------------------------------------
def _state(out: Path, preset: Preset) -> None:
    """The preset is fixed per output folder: a second run with another would mix two grids."""
    path = out / "demo.json"
    wanted = json.loads(json.dumps(asdict(preset)))  # as read back: tuples become lists
    if path.is_file():
        had = json.loads(path.read_text())
        if had != wanted:
            raise CaffeTransferError(
                f"{out} holds a demo with preset {had.get('name')!r}, not {preset.name!r}: "
                "use another --out, or delete the folder")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(wanted, indent=2) + "\n")


def write_grid(out: Path, data: Path, preset: Preset) -> list[Path]:
    """Run folders for the preset's grid under `out/runs`; existing ones are kept as they are.
    Each net tests its whole val set; the seed folders set Caffe's random_seed to their number."""
    sizes = {name: len(classes) * preset.test_per_class for name, classes in datasets(preset).items()}
    folders = []
    for group, treatments in grid(preset).items():
        seed = {"random_seed": int(group[4:])} if group.startswith("seed") else {}
        for t in treatments:
            folder = out / "runs" / group / t.name
            folders.append(folder)
            if (folder / "treatment.json").is_file():
                continue
            test_iter = -(-sizes[t.val_set.removesuffix("_valid")] // ARCH.val_batch)
            write_runs({folder: t}, GenOptions(arch=ARCH.name, data_root=data, fc8_outputs="classes", gpu=False,
                                               solver={**preset.solver, **seed, "test_iter": test_iter}))
    return folders


@dataclass
class DemoResult:
    out: Path
    grid: GridResult
    report: Path
    seconds: float


def run_demo(out: str | Path, preset_name: str = "standard", workers: int | None = None,
             progress: bool = True) -> DemoResult:
    """Data, grid, training and report of the scaled-down reproduction, into `out`."""
    if preset_name not in PRESETS:
        raise CaffeTransferError(f"unknown preset {preset_name!r}: expected one of {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    out = Path(out).resolve()
    started = time.monotonic()
    _source_files(FASHION_MNIST)
    _state(out, preset)
    data = prepare_data(out, preset, progress)
    run_dirs = write_grid(out, data, preset)
    result = run_grid(run_dirs, workers=workers or os.cpu_count() or 1, progress=progress)
    report = out / "report"
    if not result.interrupted:
        from caffe_transfer.results.findings import write_findings
        from caffe_transfer.results.report import write_report

        title = f"caffe-transfer demo, {preset.name} preset"
        summary = write_report(sorted(p for p in (out / "runs").iterdir() if p.is_dir()), report,
                               report / "numbers.json", natman_title="Garments / footwear-and-bags split",
                               compare=False, base_half="B", title=title)
        write_findings(summary, report / "findings.md", title, judge=preset.judges)
    return DemoResult(out, result, report, time.monotonic() - started)
