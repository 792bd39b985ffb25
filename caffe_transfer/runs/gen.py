"""Run folders: the prototxts and the treatment description of one net, or of the whole grid.

`render_run` turns a treatment and an architecture into plain data (layers with their blobs,
`param` multipliers and include phases; the solver values) and the Jinja2 templates in
`templates/` only print it. `write_runs` writes a folder atomically and refuses to touch one that
already holds snapshots, or files gen did not write (treatment.json records the digest of each
file it wrote), unless forced; forced, it keeps the snapshots, which then refuse to resume.

A run folder holds `train_val.prototxt`, `solver.prototxt`, `deploy.prototxt` and
`treatment.json`. Caffe runs with the run folder as its working directory, so the solver names the
net and the snapshot prefix relative to it; data, mean and base weights are absolute paths.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from caffe_transfer.common.atomic import write_atomic
from caffe_transfer.common.caffe_env import caffe_pb2
from caffe_transfer.common.errors import CaffeTransferError
from caffe_transfer.common.protos import parse_text
from caffe_transfer.common.shell import one_line, shell_word
from caffe_transfer.common.version import __version__
from caffe_transfer.data.splits import IMAGENET_CLASSES, half_classes
from caffe_transfer.model.architectures import (
    Architecture,
    ProtoEnum,
    architecture,
    default_fc8_outputs,
    with_engine,
)
from caffe_transfer.model.solvers import solver_values
from caffe_transfer.model.treatments import Kind, Treatment, authors_grid
from caffe_transfer.runs import cudnn, folder
from caffe_transfer.runs.folder import (
    SNAPSHOT_DIR,
    foreign_files,
    has_snapshots,
    snapshot_file,
    snapshot_prefix,
)
from caffe_transfer.runs.lock import holder
from caffe_transfer.runs.records import NET, SOLVER, Fingerprint, digest

TRAINABLE = [{"lr_mult": 1, "decay_mult": 1}, {"lr_mult": 2, "decay_mult": 0}]
FROZEN = [{"lr_mult": 0, "decay_mult": 0}, {"lr_mult": 0, "decay_mult": 0}]
# LMDB only: make-lmdb and prepare write no LevelDB, and the Caffe tools/install_caffe.sh builds has
# none (USE_LEVELDB=OFF), so a LevelDB net would fail only when Caffe starts.
BACKENDS = ("lmdb",)
EXECUTABLE = ("run.sh",)
PROTOTXTS = {"train_val.prototxt": "NetParameter", "deploy.prototxt": "NetParameter",
             "solver.prototxt": "SolverParameter"}
NET_NAME = "CaffeNet"


@dataclass
class GenOptions:
    """Everything besides the treatment that decides a run folder's contents."""

    arch: str = "caffenet"
    data_root: Path = Path("data")
    backend: str = "lmdb"
    fc8_outputs: int | str | None = None  # None: the architecture's default; "classes": N-way
    base_weights: Path | None = None      # None: the base run's final snapshot beside this run
    gpu: bool = True
    engine: str | None = None  # "caffe" or "cudnn" on every layer that has both; None: Caffe's default
    cudnn: dict = field(default_factory=dict)  # a cuDNN build's switches (runs.cudnn), by variable
    solver: dict = field(default_factory=dict)  # overrides of the schedule's values


# --- data ----------------------------------------------------------------------------------
def dataset_dir(data_root: Path, dataset: str) -> Path:
    """Where a dataset's list, LMDB and mean live: `DATA_ROOT/<dataset>/`."""
    return Path(data_root).resolve() / dataset


def db_path(data_root: Path, dataset: str, backend: str) -> Path:
    return dataset_dir(data_root, dataset) / backend


def mean_path(data_root: Path, dataset: str) -> Path:
    return dataset_dir(data_root, dataset) / "mean.binaryproto"


def num_classes(treatment: Treatment, data_root: Path) -> int:
    """Classes of the training set: its idxmap where the lists exist, else ImageNet's counts."""
    idxmap = dataset_dir(data_root, treatment.train_set) / "idxmap.txt"
    if idxmap.is_file():
        return sum(1 for line in idxmap.read_text().splitlines() if line.strip() and not line.startswith("#"))
    if treatment.kind in (Kind.BASE, Kind.TRANSFER):
        return len(half_classes(treatment.split, treatment.half))
    return IMAGENET_CLASSES


def resolve_fc8(treatment: Treatment, options: GenOptions) -> int:
    value = options.fc8_outputs
    if value is None:
        value = default_fc8_outputs(options.arch) or "classes"
    if value == "classes":
        return num_classes(treatment, options.data_root)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CaffeTransferError(f"fc8 outputs {value!r}: expected a number or 'classes'") from None


# --- nets ----------------------------------------------------------------------------------
def body_layers(treatment: Treatment, arch: Architecture) -> tuple[list[dict], str]:
    """The layers between data and loss, renamed and frozen as the treatment says, and the
    name of the last blob."""
    roles = {r.layer: r for r in treatment.layer_roles([w.name for w in arch.weight_layers])}
    blob, layers = "data", []
    for layer in arch.layers:
        role = roles.get(layer.name)
        name = role.name if role else layer.name
        bottom = blob
        if not layer.in_place:
            blob = name
        entry: dict = {"name": name, "type": layer.type, "bottom": bottom, "top": blob}
        if role:
            entry["param"] = FROZEN if role.frozen else TRAINABLE
        entry.update(layer.params)
        layers.append(entry)
    return layers, blob


def _data_layer(phase: str, source: Path, backend: str, mean: Path, arch: Architecture) -> dict:
    batch = arch.train_batch if phase == "TRAIN" else arch.val_batch
    transform = {"mirror": phase == "TRAIN", "crop_size": arch.crop_size, "mean_file": str(mean)}
    if arch.input_scale:
        transform["scale"] = arch.input_scale
    return {
        "name": "data", "type": "Data", "top": ["data", "label"],
        "include": {"phase": ProtoEnum(phase)},
        "transform_param": transform,
        "data_param": {"source": str(source), "batch_size": batch, "backend": ProtoEnum(backend.upper())},
    }


def train_val_layers(treatment: Treatment, arch: Architecture, options: GenOptions) -> list[dict]:
    if options.backend not in BACKENDS:
        why = (": make-lmdb writes LMDBs only, and Caffe as tools/install_caffe.sh builds it reads no LevelDB"
               if options.backend == "leveldb" else "")
        raise CaffeTransferError(f"backend {options.backend!r}: expected {' or '.join(BACKENDS)}{why}")
    mean = mean_path(options.data_root, treatment.mean_set)
    body, out = body_layers(treatment, arch)
    train = ProtoEnum("TRAIN")
    test = ProtoEnum("TEST")
    return [
        _data_layer("TRAIN", db_path(options.data_root, treatment.train_set, options.backend),
                    options.backend, mean, arch),
        _data_layer("TEST", db_path(options.data_root, treatment.val_set, options.backend),
                    options.backend, mean, arch),
        *body,
        # As in the authors' nets: the train net ends in the loss, the val net in softmax + accuracy.
        {"name": "loss", "type": "SoftmaxWithLoss", "bottom": [out, "label"], "include": {"phase": train}},
        {"name": "prob", "type": "Softmax", "bottom": out, "top": "prob", "include": {"phase": test}},
        {"name": "accuracy", "type": "Accuracy", "bottom": ["prob", "label"], "top": "accuracy",
         "include": {"phase": test}},
    ]


def input_channels(mean_file: Path) -> int:
    """Channels of the net's input: the mean's where it exists already (1 for grey data), else 3."""
    from caffe_transfer.data.lmdb import read_mean

    return read_mean(mean_file).shape[0] if Path(mean_file).is_file() else 3


def deploy_layers(treatment: Treatment, arch: Architecture, channels: int = 3) -> list[dict]:
    body, out = body_layers(treatment, arch)
    shape = {"dim": [10, channels, arch.crop_size, arch.crop_size]}
    return [{"name": "data", "type": "Input", "top": "data", "input_param": {"shape": shape}},
            *body, {"name": "prob", "type": "Softmax", "bottom": out, "top": "prob"}]


# --- run folders ---------------------------------------------------------------------------
def jinja_environment() -> jinja2.Environment:
    from caffe_transfer.common.resources import resource_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(resource_dir("templates")),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["proto"] = _proto_value
    env.filters["sh"] = shell_word
    env.filters["line"] = one_line
    return env


def _proto_value(value) -> str:
    if isinstance(value, ProtoEnum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_run(treatment: Treatment, options: GenOptions, out_dir: Path) -> dict[str, str]:
    """The contents of every file of the run folder `out_dir`, keyed by file name."""
    arch = architecture(options.arch, resolve_fc8(treatment, options))
    solver = solver_values(treatment.schedule, options.solver, gpu=options.gpu)
    out_dir = Path(out_dir).resolve()
    roles = treatment.layer_roles([w.name for w in arch.weight_layers])
    base = treatment.base
    base_weights = None
    if base:  # as given, else the base run's final snapshot by its schedule, in the folder beside this one
        final = snapshot_file(snapshot_prefix(base.name), solver_values(base.schedule, options.solver)["max_iter"])
        base_weights = options.base_weights or out_dir.parent / base.name / final
    env = jinja_environment()
    common = {"treatment": treatment, "arch": arch, "version": __version__, "net_name": NET_NAME}
    solver_fields = {"net": NET, **solver, "snapshot_prefix": snapshot_prefix(treatment.name)}
    files = {
        NET: env.get_template("train_val.prototxt.j2").render(
            layers=with_engine(train_val_layers(treatment, arch, options), options.engine), **common),
        "deploy.prototxt": env.get_template("deploy.prototxt.j2").render(
            layers=with_engine(deploy_layers(
                treatment, arch, input_channels(mean_path(options.data_root, treatment.mean_set))), options.engine),
            **common),
        SOLVER: env.get_template("solver.prototxt.j2").render(solver=solver_fields, **common),
    }
    fingerprint = Fingerprint.of(treatment.name, files[NET], files[SOLVER], base_weights)
    description = {
        "name": treatment.name,
        "notation": treatment.notation,
        "family": treatment.family,
        "kind": treatment.kind.value,
        "split": treatment.split,
        "half": treatment.half,
        "source_half": treatment.source,
        "n": treatment.n,
        "fine_tune": treatment.fine_tune,
        "images_per_class": treatment.per_class,
        "architecture": arch.name,
        "fc8_outputs": arch.weight_layers[-1].params["inner_product_param"]["num_output"],
        "train_set": treatment.train_set,
        "val_set": treatment.val_set,
        "mean_set": treatment.mean_set,
        "train_source": str(db_path(options.data_root, treatment.train_set, options.backend)),
        "val_source": str(db_path(options.data_root, treatment.val_set, options.backend)),
        "mean_file": str(mean_path(options.data_root, treatment.mean_set)),
        "base": base.name if base else None,
        "base_weights": str(base_weights) if base_weights else None,
        "base_weights_given": options.base_weights is not None,
        "layers": [{"layer": r.layer, "name": r.name, "copied_from": r.copied_from,
                    "frozen": r.frozen, "renamed": r.renamed} for r in roles],
        "solver": {k: str(v) if isinstance(v, ProtoEnum) else v for k, v in solver.items()},
        "snapshot_prefix": snapshot_prefix(treatment.name),
        "fingerprint": str(fingerprint),
        "engine": options.engine,
        "cudnn": options.cudnn,
        "generator": f"caffe-transfer {__version__}",
    }
    script = folder.script_values(treatment, solver["max_iter"], fingerprint, base_weights,
                                  options.base_weights is not None)
    files["run.sh"] = env.get_template("run.sh.j2").render(**script, **common, cudnn=cudnn.environment(options.cudnn))
    description["files"] = {name: digest(text) for name, text in files.items()}  # what is gen's to rewrite
    return {**files, folder.DESCRIPTION: json.dumps(description, indent=2) + "\n"}


def write_runs(runs: dict[Path, Treatment], options: GenOptions, force: bool = False) -> list[Path]:
    """Write each run folder. Everything is rendered and checked (each prototxt parsed by
    Caffe's own caffe_pb2) before the first file is written, so a bad option, a broken template
    or a protected folder leaves the disk as it was. A folder a trainer holds is never rewritten
    under it; `force` overwrites snapshots' folders and files gen did not write (or that were
    edited since), keeping the snapshots."""
    rendered = {}
    for out_dir, treatment in runs.items():
        held_by = holder(out_dir)
        if held_by:
            raise CaffeTransferError(f"{out_dir} is in use by {held_by}: stop it before writing the folder again")
        if has_snapshots(out_dir) and not force:
            raise CaffeTransferError(
                f"{out_dir} already holds snapshots of a run: refusing to overwrite it (use --force)")
        rendered[Path(out_dir)] = files = render_run(treatment, options, out_dir)
        foreign = [] if force else foreign_files(out_dir, list(files))
        if foreign:
            raise CaffeTransferError(f"{Path(out_dir) / foreign[0]} was not written by gen, or was edited since: "
                                     "refusing to overwrite it (use --force)")
        for name, message in PROTOTXTS.items():  # a misspelt template field fails here, not in caffe train
            parse_text(files[name], getattr(caffe_pb2(), message)(), f"{Path(out_dir) / name} as rendered")
    for out_dir, files in rendered.items():
        try:
            # Caffe checks at start-up that the snapshot prefix's folder exists.
            (out_dir / SNAPSHOT_DIR).mkdir(parents=True, exist_ok=True)
            for name, text in files.items():
                write_atomic(out_dir / name, text, mode=0o777 if name in EXECUTABLE else 0o666)
        except OSError as e:
            raise CaffeTransferError(f"cannot write run folder {out_dir}: {e.strerror or e}") from None
    return list(rendered)


def write_grid(out: str | Path, options: GenOptions, force: bool = False) -> list[Path]:
    """The authors' 170 run folders under `out`, each named as they named it."""
    return write_runs({Path(out) / t.name: t for t in authors_grid()}, options, force=force)
