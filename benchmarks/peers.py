"""The alternatives tricksweep is measured against, each written the way its own docs suggest.

- ``bare_loop``: the trainable called in-process, one trial after another (the ideal's numerator).
- ``minimal_loop``: a hand-written PyTorch loop on the same model, batch, threads and tensors.
- ``dataloader_loop``: a hand-written loop over image files through torchvision's ImageFolder and a DataLoader.
- ``plain_trial`` / ``plain_tuner``: what a user writes with plain Ray Tune around the same trainable.
- ``optuna_study``: Optuna TPE + successive halving, in-memory storage, threads as parallel workers.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

SEED_RANGE = 2**31 - 1


# --------------------------------------------------------------------------------------------
# In-process loops


class NullReport:
    """A ``Report`` that keeps the metrics and ignores checkpoints (no copy, unlike ListReport)."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def __call__(self, *, epoch: int, metrics: dict, checkpoint: str | None = None, end: str | None = None) -> None:
        self.records.append({"epoch": epoch, **metrics})

    def restore(self) -> None:
        return None


def bare_loop(configs: list[dict[str, Any]], threads: int = 1) -> list[float]:
    """Seconds per trial of ``trainables.classifier.train`` run one after another in this process."""
    import torch

    from trainables import ListReport, classifier

    torch.set_num_threads(threads)
    times = []
    for raw in configs:
        cfg = classifier.Config.model_validate(raw)
        started = time.perf_counter()
        classifier.train(cfg, ListReport())
        times.append(time.perf_counter() - started)
    return times


def trainable_throughput(raw: dict[str, Any], threads: int = 1) -> float:
    """Training images per second of one ``classifier.train`` call (setup and validation included)."""
    import torch

    from trainables import classifier, data

    torch.set_num_threads(threads)
    cfg = classifier.Config.model_validate(raw)
    split = data.load(cfg.data)
    n = len(split.train) if isinstance(split, data.Streamed) else len(split.y_train)
    started = time.perf_counter()
    classifier.train(cfg, NullReport())
    return n * cfg.epochs / (time.perf_counter() - started)


def dataloader_loop(raw: dict[str, Any], threads: int = 1) -> float:
    """Training images per second of the loop a user writes around files on disk: torchvision's
    ImageFolder (PIL resize, ToTensor, Normalize in the workers), a shuffling DataLoader with the
    same worker count, the same 80/20 split sizes, model, init, optimizer and batch size, a
    validation pass per epoch; no augmentation, metrics or checkpoints."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, random_split
    from torchvision import datasets, transforms

    from trainables import classifier

    torch.set_num_threads(threads)
    cfg = classifier.Config.model_validate(raw)
    options = cfg.data
    started = time.perf_counter()
    steps = [transforms.Resize((options.size, options.size)), transforms.ToTensor(), transforms.Normalize([0.5] * 3,
                                                                                                         [0.25] * 3)]
    folder = datasets.ImageFolder(options.root, transform=transforms.Compose(steps))
    n_val = round(len(folder) * options.val_fraction)
    train_set, val_set = random_split(folder, [len(folder) - n_val, n_val], torch.Generator().manual_seed(0))
    workers = options.loader_workers
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=workers,
                              persistent_workers=workers > 0)
    val_loader = DataLoader(val_set, batch_size=2048, num_workers=workers, persistent_workers=workers > 0)
    torch.manual_seed(cfg.seed)
    model = cfg.model.build((3, options.size, options.size), len(folder.classes), cfg.batch_norm, cfg.dropout)
    cfg.init.apply(model)
    opt = cfg.optimizer.build(model.parameters())
    for _ in range(cfg.epochs):
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            sum((model(x).argmax(1) == y).sum().item() for x, y in val_loader)
    return len(train_set) * cfg.epochs / (time.perf_counter() - started)


def minimal_loop(raw: dict[str, Any], threads: int = 1) -> float:
    """Images per second of the shortest honest PyTorch loop for the same work: the same model,
    init, optimizer, batch size and tensors, normalized once up front; a validation pass per
    epoch as the trainable does; no metrics beyond that, no checkpoints, no augmentation."""
    import torch
    import torch.nn.functional as F

    from trainables import classifier, data

    torch.set_num_threads(threads)
    cfg = classifier.Config.model_validate(raw)
    started = time.perf_counter()
    split = data.load(cfg.data)
    x = split.x_train.float().div(255)
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    x, y = (x - mean) / std, split.y_train
    x_val, y_val = (split.x_val.float().div(255) - mean) / std, split.y_val
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = cfg.model.build(split.shape, split.classes, cfg.batch_norm, cfg.dropout)
    cfg.init.apply(model)
    opt = cfg.optimizer.build(model.parameters())
    n, bs = len(y), cfg.batch_size
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            (model(x_val).argmax(1) == y_val).float().mean().item()
    return n * cfg.epochs / (time.perf_counter() - started)


# --------------------------------------------------------------------------------------------
# Plain Ray Tune


class _PlainTuneReport:
    def __call__(self, *, epoch: int, metrics: dict, checkpoint: str | None = None, end: str | None = None) -> None:
        from ray import tune

        tune.report(
            {**metrics, "epoch": epoch},
            checkpoint=tune.Checkpoint.from_directory(checkpoint) if checkpoint else None,
        )

    def restore(self) -> str | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        return checkpoint.to_directory() if checkpoint else None


def plain_trial(config: dict[str, Any], fixed: dict[str, Any], module: str = "trainables.classifier") -> None:
    """A function trainable as the Ray Tune docs show it: build the config, train, report."""
    import importlib

    import torch

    torch.set_num_threads(1)
    trainable = importlib.import_module(module)
    trainable.train(trainable.Config.model_validate({**config, **fixed}), _PlainTuneReport())


def plain_tuner(
    param_space: dict[str, Any],
    fixed: dict[str, Any],
    *,
    storage: str,
    name: str,
    reuse_actors: bool,
    seed: int = 0,
    num_samples: int = 1,
    module: str = "trainables.classifier",
    metric: str = "val_accuracy",
):
    """Plain Tune with its defaults (JSON/CSV/TBX loggers, no actor reuse unless asked); only
    ``verbose=0`` differs, to keep the benchmark's console readable."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = tune.with_resources(tune.with_parameters(plain_trial, fixed=fixed, module=module), {"cpu": 1})
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="max",
            num_samples=num_samples,
            reuse_actors=reuse_actors,
            search_alg=BasicVariantGenerator(random_state=seed),
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
    )


# --------------------------------------------------------------------------------------------
# Optuna


def suggest(trial: Any, node: Any, path: str = "") -> Any:
    """Sample a parsed tricksweep space (``tricksweep.space.parse``) define-by-run style.

    A choice between blocks is conditional: the block's parameters get names under the chosen
    option (``optimizer[adam].lr``), so TPE models each branch separately, as Optuna's docs show.
    """
    from tricksweep.space import Choice, Const, IntRange, Uniform

    if isinstance(node, dict):
        return {k: suggest(trial, v, f"{path}.{k}" if path else k) for k, v in node.items()}
    if isinstance(node, Const):
        return node.value
    if isinstance(node, IntRange):
        return trial.suggest_int(path, node.low, node.high)
    if isinstance(node, Uniform):
        return trial.suggest_float(path, node.low, node.high, log=node.log)
    assert isinstance(node, Choice)
    options = node.options
    plain = all(isinstance(o, Const) and (o.value is None or isinstance(o.value, (bool, int, float, str)))
                for o in options)
    if plain:
        return trial.suggest_categorical(path, [o.value for o in options])
    labels = [_label(o, i) for i, o in enumerate(options)]
    picked = trial.suggest_categorical(path, labels)
    i = labels.index(picked)
    return suggest(trial, options[i], f"{path}[{picked}]")


def _label(option: Any, index: int) -> str:
    from tricksweep.space import Const

    if isinstance(option, dict) and isinstance(option.get("name"), Const):
        return str(option["name"].value)
    return str(index)


class _Pruned(Exception):
    pass


class _OptunaReport:
    def __init__(self, trial: Any, metric: str):
        self.trial, self.metric = trial, metric
        self.best = -math.inf
        self.last_epoch = 0

    def __call__(self, *, epoch: int, metrics: dict, checkpoint: str | None = None, end: str | None = None) -> None:
        self.last_epoch = epoch
        value = metrics.get(self.metric, math.nan)
        if value == value:
            self.best = max(self.best, value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise _Pruned

    def restore(self) -> None:
        return None


def optuna_study(
    space: Any,
    fixed: dict[str, Any],
    *,
    trials: int,
    grace: int,
    reduction_factor: float,
    seed: int,
    jobs: int = 2,
    metric: str = "val_accuracy",
    module: str = "trainables.classifier",
) -> dict[str, Any]:
    """Optuna's TPE sampler + successive-halving pruner, in-memory storage, ``jobs`` threads.

    Returns the wall time, the best metric seen at any epoch of any trial, and epochs trained.
    """
    import importlib

    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)  # process-wide: each of the `jobs` threads trains on one core
    trainable = importlib.import_module(module)
    seeds = random.Random(seed)
    trial_seeds = [seeds.randrange(SEED_RANGE) for _ in range(trials)]
    epochs: list[int] = []

    def objective(trial: Any) -> float:
        config = suggest(trial, space)
        report = _OptunaReport(trial, metric)
        cfg = trainable.Config.model_validate({**config, **fixed, "seed": trial_seeds[trial.number]})
        try:
            trainable.train(cfg, report)
        except _Pruned:
            epochs.append(report.last_epoch)
            raise optuna.TrialPruned() from None
        epochs.append(report.last_epoch)
        return report.best

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=grace, reduction_factor=int(reduction_factor)),
    )
    started = time.perf_counter()
    study.optimize(objective, n_trials=trials, n_jobs=jobs)
    wall = time.perf_counter() - started
    best = max(
        (v for t in study.trials for v in t.intermediate_values.values() if v == v),
        default=math.nan,
    )
    return {"wall_s": wall, "best": best, "epochs": sum(epochs), "trials": len(study.trials)}


def optuna_trivial(trials: int, jobs: int = 2) -> float:
    """Seconds for ``trials`` trials of a trainable that does nothing, Optuna in memory."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    started = time.perf_counter()
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=trials, n_jobs=jobs)
    return time.perf_counter() - started
