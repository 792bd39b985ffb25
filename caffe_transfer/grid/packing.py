"""Several nets per GPU: which runs share a GPU, and the CPUs each run's data threads need.

One net alone leaves a large GPU idle part of the time (the issue's H200: one base 84.7 ms per
iteration, two at once 56.2 ms each in aggregate), so a plan may train up to `nets_per_gpu` runs
at once on each GPU, each its own Caffe process with its own snapshots and signals. Each GPU run
reads its batches with `data_threads` transform threads of Caffe's DataLayer (the
`CAFFE_DATA_THREADS` variable of the patched Caffe) plus its prefetch thread, so a GPU task asks
for nets_per_gpu x (data_threads + 1) CPUs. `run-all`, the SLURM scripts and the estimate ask
this module; none of them works these numbers out on its own. CPU runs leave the variable unset
(Caffe's automatic choice), as their cores go to OpenBLAS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

from caffe_transfer.common.caffe_env import DATA_THREADS_AUTO, DATA_THREADS_ENV, DATA_THREADS_MAX
from caffe_transfer.common.errors import CaffeTransferError

T = TypeVar("T")


@dataclass(frozen=True)
class Packing:
    """How a plan's GPUs are shared: runs at once per GPU, and DataLayer threads per run."""

    nets_per_gpu: int = 1
    data_threads: int = DATA_THREADS_AUTO

    def __post_init__(self) -> None:
        if self.nets_per_gpu < 1:
            raise CaffeTransferError(f"nets per GPU {self.nets_per_gpu}: expected 1 or more")
        if not 0 <= self.data_threads <= DATA_THREADS_MAX:
            raise CaffeTransferError(
                f"data threads {self.data_threads}: expected 0 (stock Caffe) to {DATA_THREADS_MAX}")

    def task_cpus(self, gpu: bool) -> int:
        """CPUs one GPU's runs need together: each run its data threads and its prefetch thread
        (a CPU plan: one per run, the rest is OpenBLAS's to share)."""
        return self.nets_per_gpu * (self.data_threads + 1) if gpu else self.nets_per_gpu

    def threads_within(self, cpus: int, runs: int) -> int:
        """The data threads each of `runs` runs sharing `cpus` CPUs gets: this packing's, fewer
        where the CPUs are too few (one each at the least; 0, stock Caffe, stays 0)."""
        if self.data_threads == 0:
            return 0
        return max(1, min(self.data_threads, cpus // max(1, runs) - 1))

    def blas_threads(self, gpu: bool, cpus: int, runs: int) -> int:
        """OpenBLAS threads of each of `runs` runs sharing `cpus` CPUs: a GPU run's OpenBLAS has
        next to nothing to do (cuBLAS computes), CPU runs share the CPUs out."""
        return 1 if gpu else max(1, cpus // max(1, runs))

    def environment(self, gpu: bool, cpus: int, runs: int) -> dict[str, str]:
        """What a Caffe of a GPU run is started with, `runs` of them sharing `cpus` CPUs; a CPU
        run gets nothing (Caffe chooses)."""
        return {DATA_THREADS_ENV: str(self.threads_within(cpus, runs))} if gpu else {}


def device_slots(devices: Sequence[T], nets_per_gpu: int) -> list[T]:
    """One slot per run that may train at once: each device `nets_per_gpu` times, interleaved
    (0, 1, 0, 1 for two GPUs), so that runs started one after another land on different GPUs
    while any GPU is idle."""
    return [device for _ in range(nets_per_gpu) for device in devices]


def pack(names: Sequence[T], nets_per_gpu: int) -> list[list[T]]:
    """`names` (already in the order they should start) cut into tasks of up to `nets_per_gpu`
    runs each, one task per GPU: what a SLURM array task trains at once."""
    return [list(names[i:i + nets_per_gpu]) for i in range(0, len(names), nets_per_gpu)]
