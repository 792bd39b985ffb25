"""Reading nets and solvers as Caffe's own protobuf messages, in today's syntax.

Old files (the authors' 2014 V0 `layers { layer { ... } }` nets and their solvers) go through
Caffe's `upgrade_net_proto_text` / `upgrade_solver_proto_text` first, exactly as Caffe itself would
upgrade them. `phase_net` keeps what one phase of a train_val net runs, and `comparable` strips
what may legitimately differ between two equivalent nets (data paths and DB backend), so that
equivalence is message equality, never string matching.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from google.protobuf import text_format

from caffe_transfer.common.caffe_env import caffe_pb2, run_tool
from caffe_transfer.common.errors import CaffeTransferError


def parse_text(text: str, message, where: str | Path):
    """`message` filled from prototxt `text`; a one-line error naming `where` if Caffe's own
    parser would refuse it."""
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise CaffeTransferError(f"{where}: not a valid {type(message).__name__} ({e})") from None
    return message


def _parse(path: Path, message):
    return parse_text(Path(path).read_text(), message, path)


def _upgraded(path: Path, tool_name: str, message_type):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "upgraded.prototxt"
        run_tool(tool_name, path, out)
        return _parse(out, message_type())


def read_net(path: str | Path):
    """A NetParameter in today's syntax; V0/V1 files are upgraded by Caffe's own tool."""
    pb2 = caffe_pb2()
    net = _parse(Path(path), pb2.NetParameter())
    if net.layers:  # deprecated V0/V1 `layers` field
        net = _upgraded(Path(path), "upgrade_net_proto_text", pb2.NetParameter)
    return net


def read_solver(path: str | Path):
    """A SolverParameter with deprecated fields upgraded by Caffe's own tool."""
    pb2 = caffe_pb2()
    solver = _parse(Path(path), pb2.SolverParameter())
    if solver.HasField("solver_type") or solver.train_net or solver.test_net:
        solver = _upgraded(Path(path), "upgrade_solver_proto_text", pb2.SolverParameter)
    return solver


def phase_net(net, phase: str):
    """The layers of `net` that run in `phase` ('TRAIN' or 'TEST'), with their rules removed,
    following Caffe's Net::FilterNet for phase-only rules."""
    pb2 = caffe_pb2()
    value = pb2.Phase.Value(phase)
    out = pb2.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        included = all(r.phase == value for r in layer.include if r.HasField("phase"))
        excluded = any(r.phase == value for r in layer.exclude if r.HasField("phase"))
        if included and not excluded:
            kept = out.layer.add()
            kept.CopyFrom(layer)
            del kept.include[:]
            del kept.exclude[:]
    return out


def comparable(net, weights: bool = True):
    """A copy of `net` without what equivalent nets may differ in: data source paths, DB
    backend, and the mean file's path (which mean is used is checked separately). With
    `weights=False` also without `param` multipliers and fillers, which a val net that shares
    its train net's weights does not use."""
    out = type(net)()
    out.CopyFrom(net)
    for layer in out.layer:
        if layer.HasField("data_param"):
            layer.data_param.ClearField("source")
            layer.data_param.ClearField("backend")
        if layer.HasField("transform_param"):
            layer.transform_param.ClearField("mean_file")
        if not weights:
            del layer.param[:]
            for field in ("convolution_param", "inner_product_param"):
                if layer.HasField(field):
                    getattr(layer, field).ClearField("weight_filler")
                    getattr(layer, field).ClearField("bias_filler")
    return out


def comparable_solver(solver):
    """A copy of `solver` without file names (net, train/test net, snapshot prefix)."""
    out = type(solver)()
    out.CopyFrom(solver)
    for field in ("net", "train_net", "test_net", "snapshot_prefix"):
        out.ClearField(field)
    return out


def net_diff(ours, theirs) -> str:
    """A short, readable account of where two nets first differ ('' when equal)."""
    if ours == theirs:
        return ""
    a = [layer.name for layer in ours.layer]
    b = [layer.name for layer in theirs.layer]
    if a != b:
        return f"layer names differ: {a} vs {b}"
    for la, lb in zip(ours.layer, theirs.layer):
        if la != lb:
            return (f"layer {la.name!r} differs:\n--- ours\n{text_format.MessageToString(la)}"
                    f"--- theirs\n{text_format.MessageToString(lb)}")
    return f"nets differ outside their layers:\n{text_format.MessageToString(ours)[:400]}"
