"""A plain function trainable: ``trainable: own_mlp.fit:fit``. Its config is a dict of the sampled
hyperparameters; the epoch budget, seed, device, checkpoint cadence and dataset come as ``report.info``."""

from __future__ import annotations

import os
import tempfile


def fit(config: dict, report) -> None:
    train_mlp(hidden=config["hidden"], lr=config["lr"], momentum=config.get("momentum", 0.9), report=report)


def train_mlp(*, hidden: int, lr: float, momentum: float, report) -> None:
    """Train, reporting val_accuracy and val_loss each epoch; resume from ``report.restore()``."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    info = report.info
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32, device=info.device), torch.tensor(y, device=info.device)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # the same split for every trial
    n_val = int(len(x) * info.data.get("val_fraction", 0.2))
    val, train = order[:n_val], order[n_val:]

    torch.manual_seed(info.seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    model = model.to(info.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    first = 1
    if (resume_from := report.restore()) is not None:
        state = torch.load(os.path.join(resume_from, "state.pt"), weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first = state["epoch"] + 1

    for epoch in range(first, info.epochs + 1):
        shuffle = torch.Generator().manual_seed(info.seed * 1000 + epoch)  # a resumed epoch shuffles alike
        model.train()
        for batch in train[torch.randperm(len(train), generator=shuffle)].split(64):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            logits = model(x[val])
            metrics = {"val_accuracy": (logits.argmax(1) == y[val]).float().mean().item(),
                       "val_loss": F.cross_entropy(logits, y[val]).item()}
        with tempfile.TemporaryDirectory() as folder:
            save = epoch % info.checkpoint_every == 0 or epoch == info.epochs
            if save:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                           os.path.join(folder, "state.pt"))
            report(epoch=epoch, metrics=metrics, checkpoint=folder if save else None)
