"""A test-only trainable standing in for a model whose GPU memory grows with its width: a small MLP
on a fixed random regression task, needing ``NEED_MIB[width]`` MiB. From epoch 2 on (after epoch 1
and its checkpoint, so a retry resumes from there) it raises CUDA's out-of-memory error when its
share, which the engine puts in ``TRICKSWEEP_GPU_MEMORY_MIB``, is below that need. Each attempt
appends one JSON line (node, start, end, share, width, first epoch, whether it ran out) to the file
``OOM_TRIAL_LOG`` names. A first attempt waits (at most a minute) until ``OOM_TRIAL_COMPANY`` first
attempts have started, so that trials run together whatever the machine's load: where they run
then is Ray's packing alone."""

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

NEED_MIB = {8: 900, 16: 1500, 64: 5000}
METRICS = {"val_score": "max"}


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    width: int = Field(description="hidden units; the memory it stands for is NEED_MIB[width]")
    lr: float = Field(0.05, gt=0, description="SGD learning rate")
    epochs: int = Field(2, ge=1, description="epochs to train (the engine's budget)")
    seed: int = Field(0, description="torch seed")


def wait_for_company() -> None:
    folder = Path(os.environ["OOM_TRIAL_LOG"] + ".started")
    folder.mkdir(exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(list(folder.iterdir())) < int(os.environ.get("OOM_TRIAL_COMPANY", "1")) and time.monotonic() < deadline:
        time.sleep(0.05)


def train(cfg: Config, report) -> None:
    import ray  # tests only: the node that ran the attempt, for the packing check

    share = int(os.environ.get("TRICKSWEEP_GPU_MEMORY_MIB", "0"))
    need = NEED_MIB[cfg.width]
    attempt = {"node": ray.get_runtime_context().get_node_id(), "start": time.time(), "share": share,
               "width": cfg.width, "oom": False}
    restored = report.restore()
    if restored is None:
        wait_for_company()
    torch.manual_seed(cfg.seed)
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    y = x.sum(dim=1, keepdim=True)
    net = torch.nn.Sequential(torch.nn.Linear(8, cfg.width), torch.nn.ReLU(), torch.nn.Linear(cfg.width, 1))
    first = 1
    if restored is not None:
        state = torch.load(Path(restored, "state.pt"))
        net.load_state_dict(state["net"])
        first = state["epoch"] + 1
    try:
        for epoch in range(first, cfg.epochs + 1):
            attempt.setdefault("first_epoch", epoch)  # 2 on a retry that resumed from epoch 1's checkpoint
            if epoch >= 2 and share < need:
                attempt["oom"] = True
                raise torch.cuda.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {need - share} MiB (stand-in: share {share}, need {need})"
                )
            for _ in range(20):
                net.zero_grad()
                loss = torch.nn.functional.mse_loss(net(x), y)
                loss.backward()
                # Plain SGD by hand: torch.optim's step imports torch._dynamo (~1.2 CPU-s in every
                # new worker, and each attempt here is one), and this trainable stands for memory, not training.
                with torch.no_grad():
                    for p in net.parameters():
                        p -= cfg.lr * p.grad
            with tempfile.TemporaryDirectory() as folder:
                torch.save({"net": net.state_dict(), "epoch": epoch}, Path(folder, "state.pt"))
                # A bigger net fits better: the widest, infeasible one would be best.
                report(epoch=epoch, metrics={"val_score": cfg.width - loss.item()}, checkpoint=folder)
    finally:
        attempt["end"] = time.time()
        with open(os.environ["OOM_TRIAL_LOG"], "a") as log:
            log.write(json.dumps(attempt) + "\n")
