"""The classifier on synthetic CIFAR-shaped tensors, for ``gpu_check.py --packing``'s sweeps (named
by import string, as a user's own trainable is): no download. Each trial also reports, with its
first epoch, the GPU memory its process's allocator held when the trial started (what a reused
actor kept of the trial before it) and its pid (the same pid: the actor was reused)."""

import os

from trainables import classifier
from trainables.classifier import METRICS, Config  # noqa: F401 - the trainable contract


def train(cfg: Config, report) -> None:
    import torch

    from benchmarks.gpu_check import patched_data, synthetic_split

    held = torch.cuda.memory_reserved() / 2**20 if torch.cuda.is_available() and torch.cuda.is_initialized() else 0.0
    n_train, n_val = (int(n) for n in os.environ.get("GPU_CHECK_SIZES", "256,64").split(","))

    def with_start(*, epoch: int, metrics: dict, checkpoint: str | None = None, end: str | None = None) -> None:
        report(epoch=epoch, metrics={**metrics, "held_at_start_mib": held, "pid": os.getpid()}, checkpoint=checkpoint,
               end=end)

    with_start.restore = report.restore
    with patched_data(synthetic_split(n_train, n_val)):
        classifier.train(cfg, with_start)
