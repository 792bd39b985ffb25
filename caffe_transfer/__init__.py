"""caffe-transfer: reproduce Yosinski et al., "How transferable are features in deep neural
networks?" (NIPS 2014) on real BVLC Caffe.

The pipeline, in the order data flows: `splits` -> `lists` / `lmdb_builder` -> `treatments` +
`architectures` -> `gen` (templates) -> `surgery` -> `train` -> `logs` -> `report`; `cli` on top.
"""

__version__ = "0.1.0"
