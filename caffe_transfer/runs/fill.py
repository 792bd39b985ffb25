"""Caffe's filler init of a run's deploy net, filled and saved by pycaffe or by the `caffe` tool:
the same file, bit for bit, either way.

`transplant` needs the run's net with Caffe's own filler values under a recorded seed, replaces
the copied layers' blobs, saves it and reads back what Caffe loads from the file. `filled(deploy,
seed)` gives such a net, by the route `caffe_env.fill_route` names:

- pycaffe: `caffe.set_random_seed(seed)`, then `caffe.Net(deploy, TEST)`; `net.save` writes it.
- the `caffe` tool, where pycaffe does not import (Debian 12's Boost.Python serves Python 3.11
  only): a solver over `deploy.prototxt` with `random_seed` (Caffe seeds its RNG just before it
  builds the net, as pycaffe's call does), `train_state { phase: TEST }` (the net pycaffe builds,
  so every saved layer records the same phase), `max_iter: 0` and `display: 0` (no step, no
  forward pass) snapshots the filled net with `Net::ToProto`, as `net.save` does. The copied blobs
  are replaced in that NetParameter through `caffe_pb2`, whose serialization is Caffe's own byte
  order, and Caffe reloads the written file (`-weights`, snapshotted again) for the check.

The tool's files live in a hidden folder beside the deploy net while it runs (a CaffeNet
snapshot and its solver state are about 470 MB), removed when it ends.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from caffe_transfer.common.caffe_env import caffe_pb2, fill_route, pycaffe, run_tool
from caffe_transfer.runs.folder import snapshot_file

Blobs = dict[str, list[np.ndarray]]  # layer name -> its blobs, in the net's order and shapes


def blob_array(blob) -> np.ndarray:
    """A BlobProto's values as float32, in the shape it gives (2014 files give 4-D legacy shapes)."""
    shape = tuple(blob.shape.dim) if blob.HasField("shape") else (
        blob.num, blob.channels, blob.height, blob.width)
    values = blob.data if len(blob.data) else blob.double_data
    return np.asarray(values, dtype=np.float32).reshape(shape)


class PycaffeNet:
    """The deploy net built in-process by pycaffe."""

    route = "pycaffe"
    seed_note = "caffe.set_random_seed before building the deploy net: the filler values of every layer not copied"

    def __init__(self, deploy: Path, seed: int):
        caffe = pycaffe()
        caffe.set_mode_cpu()
        caffe.set_random_seed(seed)
        self._deploy = deploy
        self._net = caffe.Net(str(deploy), caffe.TEST)
        self.params: Blobs = {name: [b.data for b in blobs] for name, blobs in self._net.params.items()}

    def put(self, name: str, blobs: list[np.ndarray]) -> None:
        """Replace a layer's blobs (each reshaped to the net's shape)."""
        for target, source in zip(self._net.params[name], blobs):
            target.data[...] = source.reshape(target.data.shape)

    def save(self, path: Path) -> Blobs:
        """Write the net to `path`; the blobs Caffe loads back from it."""
        self._net.save(str(path))
        caffe = pycaffe()
        net = caffe.Net(str(self._deploy), caffe.TEST, weights=str(path))
        return {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


class ToolNet:
    """The deploy net filled by `caffe train` (no step) and edited as a NetParameter."""

    route = "caffe"
    seed_note = ("the solver's random_seed, which caffe train sets just before building the deploy net (TEST "
                 "phase): the filler values of every layer not copied")

    def __init__(self, deploy: Path, seed: int):
        self._deploy, self._seed = deploy, seed
        self._net = caffe_pb2().NetParameter()
        self._net.ParseFromString(self._snapshot())
        self._blobs = {layer.name: layer.blobs for layer in self._net.layer if layer.blobs}
        self.params: Blobs = {name: [blob_array(b) for b in blobs] for name, blobs in self._blobs.items()}

    def put(self, name: str, blobs: list[np.ndarray]) -> None:
        """Replace a layer's blobs (each keeps the net's shape)."""
        for target, source in zip(self._blobs[name], blobs):
            target.ClearField("data")
            target.MergeFromString(_packed_floats(target.DESCRIPTOR.fields_by_name["data"].number, source))
        self.params[name] = [s.reshape(b.shape) for s, b in zip(blobs, self.params[name])]

    def save(self, path: Path) -> Blobs:
        """Write the net to `path`; the blobs Caffe loads back from it (`-weights`, snapshotted)."""
        path.write_bytes(self._net.SerializeToString())
        reloaded = caffe_pb2().NetParameter()
        reloaded.ParseFromString(self._snapshot(path))
        return {layer.name: [blob_array(b) for b in layer.blobs] for layer in reloaded.layer if layer.blobs}

    def _snapshot(self, weights: Path | None = None) -> bytes:
        """The bytes of the net `caffe train` snapshots at iteration 0 (filled, or `weights` loaded)."""
        with tempfile.TemporaryDirectory(prefix=".fill-", dir=self._deploy.parent) as scratch:
            pb2 = caffe_pb2()
            solver = pb2.SolverParameter(
                net=str(self._deploy.resolve()), random_seed=self._seed, max_iter=0, display=0, base_lr=0,
                lr_policy="fixed", solver_mode=pb2.SolverParameter.CPU, snapshot_prefix=f"{scratch}/net")
            solver.train_state.phase = pb2.TEST
            solver_file = Path(scratch) / "solver.prototxt"
            solver_file.write_text(text_format.MessageToString(solver))
            run_tool("caffe", "train", "-solver", solver_file, *(["-weights", weights] if weights else []))
            return Path(snapshot_file(f"{scratch}/net", 0)).read_bytes()


def _packed_floats(field: int, values: np.ndarray) -> bytes:
    """A packed repeated float field as protobuf encodes it (key, length, little-endian floats):
    fc6's 37M values merged in 2 s, where a list of Python floats takes 10 s and 1.2 GB."""
    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return _varint(field << 3 | 2) + _varint(len(data)) + data  # wire type 2: length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def filled(deploy: Path, seed: int) -> PycaffeNet | ToolNet:
    """The deploy net with Caffe's filler values under `seed`, by pycaffe where it imports, else
    by the `caffe` tool (CAFFE_TRANSFER_FILL forces one)."""
    return PycaffeNet(deploy, seed) if fill_route()[0] == "pycaffe" else ToolNet(deploy, seed)
