"""ILSVRC2012's own val label files, read into `image name -> wnid`.

The devkit (`ILSVRC2012_devkit_t12/data`) numbers the 1000 classes by ILSVRC2012_ID in its own
synset order (`meta.mat`, whose `synsets` also hold the internal nodes of the hierarchy: the
leaves are those with `num_children == 0`), and gives one ILSVRC2012_ID per val image in
`ILSVRC2012_validation_ground_truth.txt`, line i for `ILSVRC2012_val_%08d.JPEG` % i. That ID is
not Caffe's label (the wnid's index in sorted order); `lists` maps it through the wnid. Kaggle's
`LOC_val_solution.csv` names the wnid directly, first in each row's PredictionString.
"""

from __future__ import annotations

import csv
from pathlib import Path

from caffe_transfer.common.errors import CaffeTransferError

META = "meta.mat"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"


def _devkit_file(devkit: Path, name: str) -> Path:
    for path in (devkit / "data" / name, devkit / name):
        if path.is_file():
            return path
    raise CaffeTransferError(f"--devkit {devkit}: no data/{name}; expected the ILSVRC2012 devkit folder "
                             "(ILSVRC2012_devkit_t12, with data/meta.mat and data/" + GROUND_TRUTH + ")")


def devkit_ids(devkit: str | Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the devkit's leaf synsets (its 1000 classes)."""
    from scipy.io import loadmat

    path = _devkit_file(Path(devkit), META)
    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        rows = zip(synsets["ILSVRC2012_ID"].tolist(), synsets["WNID"].tolist(), synsets["num_children"].tolist())
        return {int(i): str(wnid) for i, wnid, children in rows if int(children) == 0}
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise CaffeTransferError(f"{path}: not the devkit's meta.mat (synsets with ILSVRC2012_ID, WNID, "
                                 f"num_children): {e}") from None


def devkit_val_wnids(devkit: str | Path) -> dict[str, str]:
    """Val image name -> wnid, from the devkit's ground truth and meta.mat."""
    ids = devkit_ids(devkit)
    path = _devkit_file(Path(devkit), GROUND_TRUTH)
    out = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        value = line.strip()
        if not value.isdigit() or int(value) not in ids:
            raise CaffeTransferError(f"{path}:{number}: {value!r} is not the ILSVRC2012_ID of a class in "
                                     f"{_devkit_file(Path(devkit), META)} (expected 1..{max(ids)})")
        out[f"ILSVRC2012_val_{number:08d}.JPEG"] = ids[int(value)]
    return out


def solution_val_wnids(path: str | Path) -> dict[str, str]:
    """Val image id (no extension) -> wnid, from Kaggle's LOC_val_solution.csv."""
    path = Path(path)
    if not path.is_file():
        raise CaffeTransferError(f"--val-solution {path} does not exist")
    out: dict[str, str] = {}
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if header[:2] != ["ImageId", "PredictionString"]:
            raise CaffeTransferError(f"{path}: header {','.join(header)!r}, expected 'ImageId,PredictionString' "
                                     "(Kaggle's LOC_val_solution.csv)")
        for number, row in enumerate(reader, start=2):
            if len(row) != 2 or not row[1].split():
                raise CaffeTransferError(f"{path}:{number}: {','.join(row)!r} is not `ImageId,WNID x y x y ...`")
            if row[0] in out:
                raise CaffeTransferError(f"{path}:{number}: {row[0]} is listed twice")
            out[row[0]] = row[1].split()[0]
    return out
