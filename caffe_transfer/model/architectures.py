"""Network architectures as plain data: the layers between the data layer and the loss.

CaffeNet (Caffe's bvlc_reference_caffenet, the paper's net) is the default. `small` keeps the
same 8 weight layers in the same order, with pooling and LRN in the same places, scaled down for
small images and CPU runs. A treatment decides per weight layer whether it is copied, frozen or
renamed; `gen` turns the result into prototxt. Nothing here knows about treatments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caffe_transfer.common.errors import CaffeTransferError


class ProtoEnum(str):
    """A protobuf enum value (printed unquoted in prototxt), e.g. MAX or TRAIN."""


@dataclass(frozen=True)
class Layer:
    """One layer. In-place layers (ReLU, Dropout) read and write the previous layer's blob."""

    name: str
    type: str
    params: dict = field(default_factory=dict)
    in_place: bool = False

    @property
    def learnable(self) -> bool:
        return self.type in ("Convolution", "InnerProduct")


@dataclass(frozen=True)
class Architecture:
    name: str
    layers: tuple[Layer, ...]
    image_size: int  # side of the stored (resized) images
    crop_size: int
    train_batch: int
    val_batch: int
    fc8_outputs: int | None  # None: as many as the dataset has classes
    input_scale: float | None = None  # transform_param scale after mean subtraction (None: none)

    @property
    def weight_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.learnable]


def _gaussian(std: float) -> dict:
    return {"type": "gaussian", "std": std}


XAVIER = {"type": "xavier"}


def _constant(value: float) -> dict:
    return {"type": "constant", "value": value}


def _conv(name, num_output, kernel, filler, bias, stride=1, pad=0, group=1) -> Layer:
    p: dict = {"num_output": num_output}
    if pad:
        p["pad"] = pad
    p["kernel_size"] = kernel
    if group != 1:
        p["group"] = group
    if stride != 1:
        p["stride"] = stride
    p["weight_filler"] = filler
    p["bias_filler"] = _constant(bias)
    return Layer(name, "Convolution", {"convolution_param": p})


def _fc(name, num_output, filler, bias) -> Layer:
    return Layer(name, "InnerProduct", {"inner_product_param": {
        "num_output": num_output, "weight_filler": filler, "bias_filler": _constant(bias)}})


def _relu(name) -> Layer:
    return Layer(name, "ReLU", in_place=True)


def _pool(name, kernel=3, stride=2) -> Layer:
    return Layer(name, "Pooling", {"pooling_param": {
        "pool": ProtoEnum("MAX"), "kernel_size": kernel, "stride": stride}})


def _lrn(name) -> Layer:
    return Layer(name, "LRN", {"lrn_param": {"local_size": 5, "alpha": 0.0001, "beta": 0.75}})


def _dropout(name) -> Layer:
    return Layer(name, "Dropout", {"dropout_param": {"dropout_ratio": 0.5}}, in_place=True)


def _body(convs: list[Layer], fcs: list[Layer]) -> tuple[Layer, ...]:
    """The CaffeNet layer order, shared by every size: pool and LRN after conv1 and conv2."""
    c1, c2, c3, c4, c5 = convs
    f6, f7, f8 = fcs
    return (
        c1, _relu("relu1"), _pool("pool1"), _lrn("norm1"),
        c2, _relu("relu2"), _pool("pool2"), _lrn("norm2"),
        c3, _relu("relu3"), c4, _relu("relu4"), c5, _relu("relu5"), _pool("pool5"),
        f6, _relu("relu6"), _dropout("drop6"),
        f7, _relu("relu7"), _dropout("drop7"),
        f8,
    )


def _caffenet(fc8: int) -> tuple[Layer, ...]:
    return _body(
        [_conv("conv1", 96, 11, _gaussian(0.01), 0, stride=4),
         _conv("conv2", 256, 5, _gaussian(0.01), 1, pad=2, group=2),
         _conv("conv3", 384, 3, _gaussian(0.01), 0, pad=1),
         _conv("conv4", 384, 3, _gaussian(0.01), 1, pad=1, group=2),
         _conv("conv5", 256, 3, _gaussian(0.01), 1, pad=1, group=2)],
        [_fc("fc6", 4096, _gaussian(0.005), 1), _fc("fc7", 4096, _gaussian(0.005), 1),
         _fc("fc8", fc8, _gaussian(0.01), 0)])


def _small(fc8: int) -> tuple[Layer, ...]:
    # Sized for 14x14 crops of 16x16 images: 14 -> pool 7 -> pool 3 -> pool5 1 (1x1x16 into fc6).
    # A quarter of the filters of a first 28x28 version: 0.010 instead of 0.167 CPU-s per
    # iteration (batch 64, one core). It needs more iterations (val accuracy flat near 0.80 from
    # about 2000 on the demo's data) but far less CPU to get there (docs/demo.md). Xavier fillers
    # and inputs scaled by 1/256 let it learn within hundreds of iterations, where CaffeNet's small
    # Gaussians need thousands; the layers, groups, pooling and LRN are CaffeNet's.
    return _body(
        [_conv("conv1", 8, 5, XAVIER, 0, pad=2),
         _conv("conv2", 16, 5, XAVIER, 0.1, pad=2, group=2),
         _conv("conv3", 24, 3, XAVIER, 0, pad=1),
         _conv("conv4", 24, 3, XAVIER, 0.1, pad=1, group=2),
         _conv("conv5", 16, 3, XAVIER, 0.1, pad=1, group=2)],
        [_fc("fc6", 64, XAVIER, 0.1), _fc("fc7", 64, XAVIER, 0.1), _fc("fc8", fc8, XAVIER, 0)])


# Layers Caffe can run with its own code (engine CAFFE, the 2014 numerics) or with cuDNN (engine
# CUDNN, Caffe's default in a cuDNN build: faster, not bit-deterministic), and the message that
# holds each one's `engine` field.
ENGINE_PARAMS = {"Convolution": "convolution_param", "Pooling": "pooling_param", "ReLU": "relu_param",
                 "LRN": "lrn_param", "Softmax": "softmax_param", "SoftmaxWithLoss": "softmax_param"}
ENGINES = ("caffe", "cudnn")


def with_engine(layers: list[dict], engine: str | None) -> list[dict]:
    """Rendered layers with Caffe's `engine` set on every layer that has one; None leaves Caffe's
    default (cuDNN where the build has it)."""
    if engine is None:
        return layers
    if engine not in ENGINES:
        raise CaffeTransferError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    value = ProtoEnum(engine.upper())
    return [{**layer, key: {**layer.get(key, {}), "engine": value}} if (key := ENGINE_PARAMS.get(layer["type"]))
            else layer for layer in layers]


_BUILDERS = {
    "caffenet": (_caffenet, dict(image_size=256, crop_size=227, train_batch=256, val_batch=50,
                                 fc8_outputs=1000)),
    "small": (_small, dict(image_size=16, crop_size=14, train_batch=64, val_batch=100,
                           fc8_outputs=None, input_scale=1 / 256)),
}
ARCHITECTURES = tuple(_BUILDERS)


def architecture(name: str, fc8_outputs: int) -> Architecture:
    """The named architecture with an fc8 of `fc8_outputs` units."""
    if name not in _BUILDERS:
        raise CaffeTransferError(
            f"unknown architecture {name!r}: expected one of {', '.join(ARCHITECTURES)}")
    build, sizes = _BUILDERS[name]
    if fc8_outputs < 1:
        raise CaffeTransferError(f"fc8 outputs {fc8_outputs}: expected a positive number")
    return Architecture(name=name, layers=build(fc8_outputs), **sizes)


def default_fc8_outputs(name: str) -> int | None:
    """The architecture's own fc8 width; None means one unit per class of the dataset."""
    if name not in _BUILDERS:
        raise CaffeTransferError(
            f"unknown architecture {name!r}: expected one of {', '.join(ARCHITECTURES)}")
    return _BUILDERS[name][1]["fc8_outputs"]
