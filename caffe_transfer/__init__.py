"""caffe-transfer: reproduce Yosinski et al., "How transferable are features in deep neural
networks?" (NIPS 2014) on real BVLC Caffe.

The pipeline, in the order data flows, one sub-package per stage (imports flow this way only):
`common` (errors, files, finding Caffe) -> `data` (lists, splits, LMDBs) -> `model` (treatments,
architectures, solvers) -> `runs` (the run folder, gen, transplant, train, logs) -> `grid` (plans,
the scheduler, SLURM) -> `results` (report, plots, findings); `demo` and `cli` on top.
"""

from caffe_transfer.common.version import __version__

__all__ = ["__version__"]
