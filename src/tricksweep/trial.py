"""What runs inside a Ray worker: the trainable's ``report`` backed by Tune, and ``run_trial``.

Light on purpose: a worker imports this module, Ray and the trainable, never the driver, the
MLflow side, the report or the CLI (``tests/test_layout.py`` checks the list). Weights files
named as ``init.source`` arrive through Ray's object store (``ShippedFile``) and are written
once per node.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune


@dataclass(frozen=True)
class ShippedFile:
    """A weights file read on the driver, to be written out on the nodes whose trials need it."""

    name: str
    digest: str  # of the content: a node's copy is written once and never goes stale
    data: Any  # Ray ObjectRef of the bytes: fetched only by a node that has no copy yet
    node: str  # the driver's node, where trials read the file where it is


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs besides its sampled config; shipped once via ``with_parameters``."""

    module: str  # the trainable's import path, resolved on the driver (workers need no registry)
    fixed: dict[str, Any]  # dataset, epochs, checkpoint cadence: the same for every trial
    cpus: float
    gpus: float
    sources: dict[str, ShippedFile] = field(default_factory=dict)  # weights files, by driver path


class TuneReport:
    """The trainable's ``report``, backed by Tune: the engine's only use of Tune's reporting API."""

    def __call__(self, *, epoch: int, metrics: dict[str, float], checkpoint: str | None = None,
                 end: str | None = None) -> None:
        tune.report(
            {**metrics, "epoch": epoch, "end": end or ""},
            checkpoint=tune.Checkpoint.from_directory(checkpoint) if checkpoint else None,
        )

    def restore(self) -> str | None:
        checkpoint = tune.get_checkpoint()
        return checkpoint.to_directory() if checkpoint else None


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Tune's function trainable: validate the sampled config and hand it to the trainable."""
    import importlib

    import torch

    torch.set_num_threads(max(1, int(ctx.cpus)))  # threads follow the CPUs Ray reserved
    module = importlib.import_module(ctx.module)
    device = "cpu"
    if ctx.gpus > 0:
        # Ray set CUDA_VISIBLE_DEVICES to the GPU it assigned (shared when gpu < 1): it is cuda:0 here.
        if not torch.cuda.is_available():
            raise RuntimeError(f"resources.gpu = {ctx.gpus:g}: Ray assigned a GPU but torch sees no CUDA device")
        device = "cuda"
    config = localize(config, ctx.sources)
    data = {**ctx.fixed["data"], **config.get("data", {})}  # space.data sweeps dataset fields
    cfg = module.Config.model_validate({**config, **ctx.fixed, "data": data, "device": device})
    module.train(cfg, TuneReport())


def localize(config: dict[str, Any], files: dict[str, ShippedFile]) -> dict[str, Any]:
    """A trial's ``config`` with every shipped ``source`` path replaced by this node's copy of the
    file (``<cache>/sources/shipped/<digest>/<name>``, written once), except on the driver's node,
    where the file is read where it is."""
    if not files:
        return config
    import ray

    here = ray.get_runtime_context().get_node_id()

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        shipped = files.get(value) if key == "source" and isinstance(value, str) else None
        if shipped is not None and not (shipped.node == here and os.path.isfile(value)):
            return str(_local_copy(shipped))
        return value

    return walk(config)


def sources_cache() -> Path:
    """Where weights files land on this node: downloaded sources and shipped copies."""
    from trainables.data import cache_dir

    return cache_dir() / "sources"


def _local_copy(file: ShippedFile) -> Path:
    import ray

    dest = sources_cache() / "shipped" / file.digest / file.name
    if dest.is_file():
        return dest
    # Trials on one node may start together: each writes a temporary file of its own and the
    # rename makes one of them the copy, whole.
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{file.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(ray.get(file.data))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache may be shared by users
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest
