"""Class-filtered, relabelled, resized LMDBs and their mean images, as Caffe's tools make them.

One LMDB per list file, with what `convert_imageset` would write: Datums (uint8, C,H,W, BGR, the
list's label) keyed `%08d_<path>` by position in the (by default shuffled, fixed-seed) list,
images decoded and resized to 256x256 by OpenCV as convert_imageset does (`--resize 0` keeps
their size), or JPEG bytes with `encoded`. The mean image is written as `compute_image_mean`
would, from a float64 sum so that 1.28M images lose no precision.

The modules, in the order data flows: `decode` (an image to a Datum, in a worker), `workers` (the
processes on all cores, robust to a decoder that dies or sticks), `writer` (into the LMDB with
the progress, so a killed build resumes), `make` (one list to one OUT_DIR); `datum` owns the
bytes of Datums and means.

Output layout (what `gen` reads): OUT_DIR/lmdb, OUT_DIR/mean.binaryproto, OUT_DIR/skipped.txt,
OUT_DIR/warnings.txt, OUT_DIR/COMPLETE.
"""

from caffe_transfer.data.lmdb.datum import datum_parts, read_mean
from caffe_transfer.data.lmdb.decode import BuildOptions, init_decoder, load_image
from caffe_transfer.data.lmdb.make import BuildResult, Dataset, build, build_many, order
from caffe_transfer.data.lmdb.target import refuse_foreign

__all__ = ["BuildOptions", "BuildResult", "Dataset", "build", "build_many", "datum_parts", "init_decoder", "load_image",
           "order", "read_mean", "refuse_foreign"]
