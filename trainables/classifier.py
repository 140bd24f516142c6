"""Image classification: the trainable behind every shipped sweep.

    cfg = Config(optimizer={"name": "sgd_momentum", "lr": 0.05}, batch_norm=True)
    train(cfg, ListReport())
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from trainables.augment import Augment
from trainables.data import Dataset, Digits
from trainables.init import He, Init, Pretrained, pretrained_only
from trainables.models import CNN, Model, fits_data, switch_taken
from trainables.optim import Adam, Optimizer
from trainables.options import Strict

METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time_s")
CHECKPOINT_FILE = "state.pt"
EVAL_BATCH = 2048  # images per validation forward pass


class EarlyStopping(Strict):
    patience: int | None = Field(None, ge=1, description="epochs without improvement before stopping (null = off)")
    min_delta: float = Field(0.0, ge=0, description="smallest change of `monitor` counted as improvement")
    monitor: Literal["val_loss", "val_accuracy"] = Field("val_loss", description="validation metric watched")


class Config(Strict):
    data: Dataset = Digits()
    model: Model = CNN()
    batch_norm: bool = Field(False, description="batch normalization after every conv / hidden layer")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="drop probability before the head (CNN) or after each hidden layer (MLP)"
    )
    init: Init = He()
    optimizer: Optimizer = Adam()
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="learning rate over the epochs")
    batch_size: int = Field(64, ge=1, le=65536, description="images per optimizer step")
    normalize: bool = Field(True, description="standardize each input channel with the training set's mean/std")
    augment: Augment = Augment()
    early_stopping: EarlyStopping = EarlyStopping()
    epochs: int = Field(20, ge=1, description="epochs at most (the sweep's budget.max_epochs)")
    seed: int = Field(0, description="seeds init, shuffling, dropout and augmentation")
    device: str = Field("cpu", description="torch device; the engine sets the one Ray assigned")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="autocast dtype of forward and loss: auto = bf16 on CUDA, fp32 elsewhere (fp16 adds a grad scaler)",
    )
    channels_last: bool | None = Field(
        None, description="NHWC memory layout for the model and batches (null = on CUDA only)"
    )
    compile: bool = Field(
        False, description="torch.compile the model; pays off on long GPU trials (the first epoch compiles)"
    )
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints (the last epoch always saves)")
    diverge_factor: float = Field(
        1e3,
        gt=1,
        description="a batch loss above this multiple of the trial's first batch loss (or NaN/inf) ends it as diverged",
    )

    _pretrained_only = field_validator("init", mode="before")(pretrained_only)
    # Torchvision / factory models: one zero batch at validation; switches only where the model takes them.
    _model_fits_data = field_validator("model")(fits_data)
    _switch_taken = field_validator("batch_norm", "dropout")(switch_taken)

    @field_validator("init")
    @classmethod
    def _pretrained_fits_model(cls, init: Init, info: ValidationInfo) -> Init:
        # Fields validate in order: data, model, batch_norm and dropout are known here.
        # A factory's input shape is known only once a trial loads its data: checked there.
        if (
            isinstance(init, Pretrained)
            and {"data", "model", "batch_norm", "dropout"} <= info.data.keys()
            and info.data["data"].input_shape is not None
        ):
            init.check(info.data["model"], info.data["data"], info.data["batch_norm"], info.data["dropout"])
        return init


def train(cfg: Config, report) -> None:
    import torch
    import torch.nn.functional as F

    from trainables import augment, data
    from trainables.init import train_mode

    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # shapes are fixed within a trial: autotune once per shape
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    dtype = _autocast_dtype(cfg.precision, device)
    autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    layout = (
        torch.channels_last
        if (cfg.channels_last is None and device.type == "cuda") or cfg.channels_last
        else torch.contiguous_format
    )

    split = data.load(cfg.data)
    streamed = isinstance(split, data.Streamed)
    if streamed:
        epoch_batches = data.EpochBatches(len(split.train), cfg.batch_size)
        # One loader for the statistics' sample and the epochs: its worker processes start once.
        train_loader = split.loader(split.train, epoch_batches, pin=device.type == "cuda")
        pixels = _unit(_stats_sample(train_loader, epoch_batches, device))
    else:
        y_train = split.y_train.to(device, non_blocking=True)
        x_train = split.x_train.to(device, non_blocking=True)
        pixels = _unit(x_train)
    mean = pixels.mean(dim=(0, 2, 3), keepdim=True)
    std = pixels.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    def prepare(x):
        x = (x - mean) / std if cfg.normalize else x
        return x.contiguous(memory_format=layout) if x.dim() == 4 else x

    if streamed or cfg.augment.active:
        del pixels  # augmentation works on [0, 1] pixels: batches are converted as they are drawn
    else:
        x_train = prepare(pixels)  # once, as airbench does: every batch is then a plain slice

    def convert(xb):
        return prepare(augment.apply(_unit(xb), cfg.augment, gen)) if cfg.augment.active else prepare(_unit(xb))

    if streamed:
        pin = device.type == "cuda"
        n = len(split.train)
        val_loader = split.loader(split.val, data.EpochBatches(len(split.val), EVAL_BATCH), pin)

        def batches(order):
            # The in-memory path's order, read from disk: the same batches, the same results.
            epoch_batches.order = order.tolist()
            for xb, yb in train_loader:
                yield convert(xb.to(device, non_blocking=True)), yb.to(device, non_blocking=True)

        def val_batches():
            for xb, yb in val_loader:
                yield prepare(_unit(xb.to(device, non_blocking=True))), yb.to(device, non_blocking=True)
    else:
        n = len(y_train)
        x_val = prepare(_unit(split.x_val.to(device)))
        y_val = split.y_val.to(device)

        def batches(order):
            for i in range(0, n, cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                yield (convert(x_train[idx]) if cfg.augment.active else x_train[idx]), y_train[idx]

        def val_batches():
            for i in range(0, len(y_val), EVAL_BATCH):
                yield x_val[i : i + EVAL_BATCH], y_val[i : i + EVAL_BATCH]

    model = cfg.model.build(split.shape, split.classes, cfg.batch_norm, cfg.dropout)
    cfg.init.apply(model)
    model = model.to(device, memory_format=layout)
    forward = torch.compile(model) if cfg.compile else model
    optimizer = cfg.optimizer.build([p for p in model.parameters() if p.requires_grad])  # frozen layers: none
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
        if cfg.lr_schedule == "cosine"
        else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    )
    stopper = _Patience(cfg.early_stopping)
    # The engine's report says which epochs' checkpoints it keeps (its policy: improvement, time,
    # last epoch): the state is written only for those. A report without it keeps what it is given.
    wanted = getattr(report, "wants_checkpoint", None)
    first_epoch = 1
    loss_limit = math.inf  # set from the first batch's loss

    if (resume_dir := report.restore()) is not None:
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device.
        state = torch.load(os.path.join(resume_dir, CHECKPOINT_FILE), map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        gen.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])  # dropout draws from torch's global generator
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        stopper.best, stopper.bad_epochs = state["best"], state["bad_epochs"]
        loss_limit = state["loss_limit"]
        first_epoch = state["epoch"] + 1
        if state["end"] or first_epoch > cfg.epochs:
            # Restored after the trial had already ended: say so again rather than train on.
            report(epoch=state["epoch"], metrics=state["metrics"], end=state["end"])
            return

    # Reading a value back from a GPU waits for every queued kernel, so on CUDA the divergence
    # flag is read every few dozen batches and at the epoch's end instead of after each batch.
    check_every = 1 if device.type == "cpu" else 32
    for epoch in range(first_epoch, cfg.epochs + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_mode(model)  # frozen batch norms stay in eval mode
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bad = torch.zeros((), device=device, dtype=torch.bool)
        order = torch.randperm(n, generator=gen, device=device)
        diverged = False
        for step, (xb, yb) in enumerate(batches(order)):
            with autocast:
                logits = forward(xb)
                loss = F.cross_entropy(logits, yb)
            if loss_limit == math.inf:
                loss_limit = loss.item() * cfg.diverge_factor
            bad |= ~(loss.detach() <= loss_limit)  # also catches NaN
            if step % check_every == 0 and bad.item():
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
        diverged = diverged or bool(bad.item())
        schedule.step()

        with autocast:
            val_loss, val_accuracy = _evaluate(forward, val_batches(), device)
        metrics = {
            "train_loss": math.nan if diverged else loss_sum.item() / n,
            "train_accuracy": math.nan if diverged else correct.item() / n,
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": lr,
            "epoch_time_s": time.perf_counter() - started,
        }
        if diverged or not math.isfinite(val_loss):
            report(epoch=epoch, metrics=metrics, end="diverged")  # weights are garbage: no checkpoint
            return
        end = "early_stopped" if stopper.should_stop(metrics) else None
        offered = not (epoch % cfg.checkpoint_every and epoch != cfg.epochs and end is None)
        if not offered or (wanted is not None and not wanted(epoch=epoch, metrics=metrics, end=end)):
            report(epoch=epoch, metrics=metrics)
            continue
        with tempfile.TemporaryDirectory(prefix="ckpt-") as ckpt:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "rng": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.zeros(0),
                    "loss_limit": loss_limit,
                    "metrics": metrics,
                    "end": end,
                    "best": stopper.best,
                    "bad_epochs": stopper.bad_epochs,
                    "epoch": epoch,
                },
                os.path.join(ckpt, CHECKPOINT_FILE),
            )
            report(epoch=epoch, metrics=metrics, checkpoint=ckpt, end=end)
        if end:
            return


def _autocast_dtype(precision: str, device):
    """The autocast dtype for ``precision`` on ``device``; None = plain fp32."""
    import torch

    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _evaluate(model, batches, device) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    model.eval()
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            loss += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
    return loss.item() / count, correct.item() / count


def _unit(x):
    """Pixels as float in [0, 1]: uint8 images are scaled, float images (a factory's) kept."""
    return x.float().div_(255) if not x.is_floating_point() else x.float()


def _stats_sample(loader, batches, device):
    """Up to STATS_SAMPLE training images of streamed data (a seeded subset, in index order; all
    when there are fewer), read through the training DataLoader: what normalization's statistics
    come from."""
    import torch

    from trainables.data import STATS_SAMPLE

    n, batch_size = len(batches.order), batches.batch_size
    if n > STATS_SAMPLE:
        batches.order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:STATS_SAMPLE].sort()[0].tolist()
    batches.batch_size = EVAL_BATCH
    try:
        return torch.cat([xb for xb, _ in loader]).to(device)
    finally:
        batches.batch_size = batch_size


class _Patience:
    """Stops after `patience` epochs in a row without `min_delta` improvement of `monitor`."""

    def __init__(self, options: EarlyStopping):
        self.options = options
        self.best: float | None = None
        self.bad_epochs = 0

    def should_stop(self, metrics: dict[str, float]) -> bool:
        if self.options.patience is None:
            return False
        value = metrics[self.options.monitor]
        sign = 1.0 if self.options.monitor == "val_accuracy" else -1.0
        if self.best is None or sign * (value - self.best) > self.options.min_delta:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.options.patience
