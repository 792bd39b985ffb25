"""Weight transplant by net surgery: a transfer net's initial weights from its base.

The target net is built from the run's `deploy.prototxt` (the same weight layers as its train
net, without the data layers, so no LMDB is needed), with Caffe's own filler initialisation under
a recorded seed, by pycaffe or, where it does not import, by the `caffe` tool (`fill.py`: the same
file either way). For each weight layer the treatment model says whether it is copied, and from
which base layer; those blobs are copied into the net, the rest keep their filler values.
Every base layer is checked (present, same shape) before anything is written, because Caffe's own
`CopyTrainedLayersFrom` aborts the process on a shape mismatch and silently skips a missing name.
The saved file is reloaded and the copied blobs compared bit for bit with the base.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.caffe_env import caffe_pb2
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.model.treatments import Kind
from caffe_transfer.runs.fill import Blobs, blob_array, filled
from caffe_transfer.runs.folder import RECORD, Run

DEPLOY = "deploy.prototxt"


def read_caffemodel(path: str | Path) -> dict[str, list[np.ndarray]]:
    """The blobs of every layer of a .caffemodel (today's `layer` or the 2014 `layers` field),
    as float32 arrays in the shape the file gives (2014 files give 4-D legacy shapes)."""
    return _parse_caffemodel(_read_weights(Path(path)), Path(path))


def _read_weights(path: Path) -> bytes:
    if not path.is_file():
        raise CaffeTransferError(f"base weights {path} do not exist")
    return path.read_bytes()


def _parse_caffemodel(data: bytes, path: Path) -> dict[str, list[np.ndarray]]:
    net = caffe_pb2().NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError:
        raise CaffeTransferError(f"{path} is not a .caffemodel (not a serialized NetParameter)") from None
    layers = {layer.name: list(layer.blobs) for layer in [*net.layer, *net.layers] if layer.blobs}
    if not layers:
        raise CaffeTransferError(f"{path} is not a .caffemodel: it holds no layer with weights")
    return {name: [blob_array(b) for b in blobs] for name, blobs in layers.items()}


def _fits(source: tuple, target: tuple) -> bool:
    """Caffe's Blob::ShapeEquals: equal shapes, or a 4-D legacy shape equal to the target
    padded with leading 1s."""
    if source == target:
        return True
    return len(source) == 4 and len(target) <= 4 and source == (1,) * (4 - len(target)) + target


def checksum(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def default_seed(run: Run) -> int:
    """A stable filler seed per run, so that two runs never share an init by accident and a
    repeated transplant gives the same file."""
    return zlib.crc32(run.name.encode())


@dataclass
class Transplant:
    init: Path
    record: Path
    layers: list[dict]
    seed: int


def transplant(run_dir: str | Path, base: str | Path | None = None, out: str | Path | None = None,
               seed: int | None = None, force: bool = False) -> Transplant:
    """Write the initial weights of a transfer (or random-frozen) run and its `transplant.json`.

    `base` defaults to the base run's final snapshot. Nothing is written unless every copied layer
    is found in the base with the right shape and survives the save bit for bit. The run's own
    init is written under the folder's lock, and never once the run has trained from it; weights
    written elsewhere (`out`) get their record beside them (`<out>.json`), and never over an input
    or (unless `force`) over files transplant did not write."""
    run = Run.load(run_dir)
    out = Path(out).resolve() if out else run.init_weights
    _check_out(run, base, out, force)
    if out != run.init_weights:
        return make_init(run, base, out, seed)
    with run.lock("caffe-transfer transplant"):
        trained = run.resume_state()
        if trained:
            raise CaffeTransferError(
                f"{run.dir} has trained from its {run.init_weights.name} already ({trained.state.name}): a new "
                f"init would not be what its snapshots started from; move snapshots/ and train.log aside first")
        return make_init(run, base, out, seed)


def _check_out(run: Run, base: str | Path | None, out: Path, force: bool) -> None:
    """Refuse an `out` that is one of transplant's inputs, or a file (or record beside it) that
    transplant did not write: its record names it."""
    inputs = [run.dir / DEPLOY]
    if run.treatment.kind is Kind.TRANSFER:  # make_init refuses a base for the others
        try:
            inputs.append(Path(base) if base else run.base_weights())
        except CaffeTransferError:
            pass  # make_init says why there is no base
    record = run.dir / RECORD if out == run.init_weights else out.with_name(f"{out.name}.json")
    for path in (out, record):
        if path.resolve() in {p.resolve() for p in inputs}:
            raise CaffeTransferError(f"--out {out}: {path} is an input of this transplant: choose another file")
    if force or out == run.init_weights:
        return
    try:
        ours = json.loads(record.read_text()).get("init") == str(out)
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours and (out.exists() or record.exists()):
        raise CaffeTransferError(f"--out {out}: {out if out.exists() else record} was not written by transplant: "
                                 "refusing to overwrite it (use --force)")


def make_init(run: Run, base: str | Path | None, out: Path, seed: int | None) -> Transplant:
    """`transplant` on a run whose folder the caller holds (or weights outside the folder)."""
    t = run.treatment
    if t.kind not in (Kind.TRANSFER, Kind.RANDOM):
        raise CaffeTransferError(
            f"{run.name} ({t.family}) trains from scratch: there is nothing to transplant")
    if t.kind is Kind.RANDOM and base is not None:
        raise CaffeTransferError(f"{run.name} (random) freezes its own filler init: it takes no --base")
    base_path = (Path(base) if base else run.base_weights()) if t.kind is Kind.TRANSFER else None
    raw = _read_weights(base_path) if base_path else b""  # read once: parsed and hashed
    base_blobs = _parse_caffemodel(raw, base_path) if base_path else {}
    seed = default_seed(run) if seed is None else seed

    net = filled(run.dir / DEPLOY, seed)
    copies = _plan_copies(run, net.params, base_blobs, base_path)
    for name, blobs in copies.items():
        net.put(name, blobs)
    layers = _describe(run, net.params, base_path)

    # run.sh reads fingerprint, base_chosen, base_sha256 and init_sha256 as json.dumps(indent=2)
    # writes them: one top-level key a line.
    record = {
        "run": run.name, "treatment": t.notation, "family": t.family,
        "fingerprint": str(run.fingerprint),  # of the folder this init was made for
        "init": str(out), "seed": seed, "seed_note": net.seed_note, "filled_by": net.route,
        "base": str(base_path) if base_path else None, "base_chosen": base is not None,
        "base_sha256": hashlib.sha256(raw).hexdigest() if base_path else None,
        "layers": layers,
    }
    record_path = run.dir / RECORD if out == run.init_weights else out.with_name(f"{out.name}.json")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        _check_reload(tmp, net.save(tmp), copies, net.params)
        record["init_sha256"] = hashlib.sha256(tmp.read_bytes()).hexdigest()  # the file train starts from
        # the record first: training takes an existing init as done, so it must never lack one
        write_atomic(record_path, json.dumps(record, indent=2) + "\n")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return Transplant(out, record_path, layers, seed)


def _plan_copies(run: Run, params: Blobs, base_blobs: dict, base_path: Path | None) -> Blobs:
    """Net layer name -> base blobs to copy, each checked against the net's shape."""
    copies = {}
    for role in run.roles():
        if not role.copied_from:
            continue
        if role.layer not in base_blobs:
            raise CaffeTransferError(
                f"base {base_path} has no layer {role.layer!r} (it has {', '.join(base_blobs)})")
        source, target = base_blobs[role.layer], params[role.name]
        if len(source) != len(target):
            raise CaffeTransferError(
                f"layer {role.layer!r}: base {base_path} has {len(source)} blobs, the net needs {len(target)}")
        for i, (s, b) in enumerate(zip(source, target)):
            if not _fits(s.shape, b.shape):
                raise CaffeTransferError(
                    f"layer {role.layer!r} blob {i}: base {base_path} has shape {list(s.shape)}, "
                    f"the net needs {list(b.shape)}")
        copies[role.name] = source
    return copies


def _describe(run: Run, params: Blobs, base_path: Path | None) -> list[dict]:
    layers = []
    for role in run.roles():
        entry = {"layer": role.name, "action": "copied" if role.copied_from else "filler",
                 "frozen": role.frozen}
        if role.copied_from:
            entry.update(from_run=role.copied_from, from_layer=role.layer, from_file=str(base_path))
        entry["blobs"] = [{"shape": list(b.shape), "sha256": checksum(b)} for b in params[role.name]]
        layers.append(entry)
    return layers


def _check_reload(saved: Path, reloaded: Blobs, copies: Blobs, fillers: Blobs) -> None:
    """Compare every blob Caffe reloaded from the saved weights bit for bit: copied ones with
    the base, the others with the filler values that were saved."""
    for name, blobs in reloaded.items():
        expected = [s.reshape(b.shape) for s, b in zip(copies[name], blobs)] if name in copies else fillers[name]
        for i, (b, e) in enumerate(zip(blobs, expected)):
            if not _identical(b, e):
                raise CaffeTransferError(f"layer {name!r} blob {i} differs after saving and reloading {saved}")
