"""The sweep's best model in MLflow's model registry: logged on the parent run, registered once per
sweep, the alias moved only when it does better. Everything is read back from MLflow (the parent
run's tags, its resolved spec and ``best_checkpoint/``), so the end of ``run`` / ``resume`` and
``tricksweep register NAME`` on a finished sweep take the same path.

    register_best("sqlite:////work/mlflow.db", parent_run_id)   # -> Registered(model='quickstart', version='3', ...)
    mlflow.pyfunc.load_model("models:/quickstart@best").predict(images)   # images: float32 (N, C, H, W) in 0..255

The served model is the trained network behind the preprocessing its trainable did (uint8 pixels
to [0, 1], standardized with the training set's per-channel mean and std), ending in a softmax:
raw images in, class probabilities out. It is saved in torch.export's pt2 format, so loading it
needs MLflow and torch only: no tricksweep, no trainables, no pickled classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from trainables import TRAINABLES
from tricksweep.spec import Registration
from tricksweep.tracking import open_client

ARTIFACT_NAME = "best_model"  # the logged model's name on the parent run
VERSION_TAG = "tricksweep.registered_model"  # on the parent run: "NAME/VERSION"
# Lineage on every registered version.
LINEAGE = ("sweep", "parent_run_id", "child_run_id", "trial", "epoch", "metric", "mode", "metric_value",
           "spec_hash", "git_commit")


@dataclass(frozen=True)
class Registered:
    """A registered version and whether it holds the alias now."""

    model: str
    version: str
    alias: str
    holds_alias: bool
    metric: str
    value: float

    @property
    def uri(self) -> str:
        return f"models:/{self.model}@{self.alias}" if self.holds_alias else f"models:/{self.model}/{self.version}"


@dataclass(frozen=True)
class Served:
    """What a trainable's builder returns: the module to export and an input example (batch >= 2,
    so torch.export keeps the batch dimension dynamic)."""

    module: Any  # torch.nn.Module, in eval mode
    example: Any  # numpy float32 (N, ...) with N >= 2


def _classifier(config: dict[str, Any], state: dict[str, Any]) -> Served:
    """The built-in classifier's network, rebuilt by its own code (Config, model.build), with its
    input preprocessing in front: the same operations, in the same order, as ``classifier.train``."""

    from trainables import data
    from trainables.classifier import Config

    # The init is irrelevant (weights are loaded) and a pretrained one would want its source file.
    sampled = {k: v for k, v in config.items() if k not in ("seed", "init")}
    cfg = Config.model_validate({**sampled, "device": "cpu"})
    split = data.load(cfg.data)
    pixels = split.x_train.float().div_(255)
    mean = pixels.mean(dim=(0, 2, 3), keepdim=True)
    std = pixels.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    net = cfg.model.build(split.shape, split.classes, cfg.batch_norm, cfg.dropout)
    net.load_state_dict(state["model"])
    module = _preprocessed(net, mean, std, cfg.normalize).eval()
    return Served(module, split.x_val[:2].float().numpy())


def _preprocessed(net: Any, mean: Any, std: Any, normalize: bool) -> Any:
    import torch

    class Classifier(torch.nn.Module):
        """Raw pixels (0..255, float or uint8, N x C x H x W) -> class probabilities."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.normalize = normalize
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            x = images.float().div(255)
            if self.normalize:
                x = (x - self.mean) / self.std
            return torch.softmax(self.net(x).float(), dim=1)

    return Classifier()


# Trainable module -> how its best checkpoint becomes a servable model. A user's own trainable is
# not here: tricksweep does not know its network, and its best checkpoint stays on the parent run.
BUILDERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Served]] = {
    "trainables.classifier": _classifier,
}


def after_sweep(uri: str, parent_run_id: str, echo: Callable[[str], None] = print) -> Registered | None:
    """The end of ``run`` / ``resume``: register the best model unless the spec says
    ``registry: false``. Never fails the sweep (it is recorded already): a problem is one line
    naming the command that retries."""
    try:
        spec = _resolved_spec(open_client(uri), parent_run_id)
        if spec.get("registry", {}) is None:
            return None
        return register_best(uri, parent_run_id, echo=echo)
    except Exception as err:  # noqa: BLE001 - the sweep is recorded; registering can be retried
        name = _sweep_name(uri, parent_run_id)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        echo(f"model not registered: {type(err).__name__}: {reason} (retry: tricksweep register {name})")
        return None


def register_best(uri: str, parent_run_id: str, *, model: str | None = None, alias: str | None = None,
                  echo: Callable[[str], None] = print) -> Registered | None:
    """Log the sweep's best checkpoint as an MLflow model of its parent run, register it (once per
    sweep: a resume that found no better trial reuses the version) and move the alias to it if it
    beats the version holding the alias. ``model`` / ``alias`` override the spec's ``registry``.
    Returns None, after one line saying why, when there is nothing to register."""
    client = open_client(uri)
    run = client.get_run(parent_run_id)
    tags = run.data.tags
    spec = _resolved_spec(client, parent_run_id)
    options = Registration.model_validate(spec.get("registry") or {})
    name = model or options.model or spec["name"]
    alias = alias or options.alias
    metric, mode = spec["metric"], spec["mode"]
    target = TRAINABLES.get(spec["trainable"], spec["trainable"])
    builder = BUILDERS.get(target)
    if builder is None:
        echo(f"model not registered: trainable {spec['trainable']!r} is your own code, whose network tricksweep "
             "does not know (a checkpoint its best trial reported stays on the parent run under best_checkpoint/)")
        return None
    if "tricksweep.best_trial" not in tags:
        echo(f"model not registered: sweep {spec['name']} has no best trial with a {metric} value")
        return None

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(client.download_artifacts(parent_run_id, "best_checkpoint", tmp))
        except Exception:  # noqa: BLE001 - MLflow raises several kinds for a missing artifact
            echo(f"model not registered: the parent run {parent_run_id} has no best_checkpoint/ artifacts")
            return None
        config = yaml.safe_load((folder / "best_config.yaml").read_text()) or {}
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    epoch = int(state["epoch"])
    value = float(state["metrics"][metric])
    lineage = {
        "sweep": spec["name"],
        "parent_run_id": parent_run_id,
        "child_run_id": tags.get("tricksweep.best_run_id", ""),
        "trial": tags["tricksweep.best_trial"],
        "epoch": str(epoch),
        "metric": metric,
        "mode": mode,
        "metric_value": repr(value),
        "spec_hash": _spec_hash(client, parent_run_id),
        "git_commit": tags.get("mlflow.source.git.commit", ""),
    }
    version = _already_registered(client, tags.get(VERSION_TAG), name, lineage)
    said = "already registered:"
    if version is None:
        version = _log_and_register(uri, parent_run_id, name, builder(config, state), lineage)
        client.set_tag(parent_run_id, VERSION_TAG, f"{name}/{version}")
        said = "registered"
    return _maybe_move_alias(client, name, version, alias, lineage, lambda line: echo(f"{said} {line}"))


def _log_and_register(uri: str, parent_run_id: str, name: str, served: Served, lineage: dict[str, str]) -> str:
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    with torch.no_grad():
        probabilities = served.module(torch.from_numpy(served.example)).numpy()
    signature = ModelSignature(
        # Unnamed tensors: a named one makes pyfunc hand the model a dict, which the torch flavour refuses.
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *served.example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, probabilities.shape[1]))]),
    )
    with _global_tracking_uri(uri, experiment_id=open_client(uri).get_run(parent_run_id).info.experiment_id):
        info = mlflow.pytorch.log_model(
            served.module,
            name=ARTIFACT_NAME,
            run_id=parent_run_id,  # the finished parent run, left as it is (no start_run/end_run)
            signature=signature,
            input_example=served.example,
            serialization_format="pt2",  # torch.export: loads with torch alone, no pickled classes
            # Given, not inferred: inference imports the model in a subprocess (seconds) to list packages.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
            tags={f"tricksweep.{k}": v for k, v in lineage.items()},
        )
        # Registered here rather than through log_model's registered_model_name: the version is
        # created with its lineage tags in one call instead of one call per tag afterwards.
        registered = mlflow.register_model(
            info.model_uri, name, tags={f"tricksweep.{k}": v for k, v in lineage.items()},
        )
    version = str(registered.version)
    client = open_client(uri)
    client.update_model_version(
        name, version,
        description=f"sweep {lineage['sweep']}: trial {lineage['trial']} at epoch {lineage['epoch']}, "
                    f"{lineage['metric']} = {float(lineage['metric_value']):.4f}",
    )
    return version


@contextlib.contextmanager
def _global_tracking_uri(uri: str, experiment_id: str) -> Iterator[None]:
    """``uri`` as MLflow's global tracking URI and ``experiment_id`` as its experiment while
    ``log_model`` runs (it takes neither as an argument), then exactly what was there before. The
    registry follows the tracking URI unless MLFLOW_REGISTRY_URI says otherwise, and then every
    client here follows that too. Without the experiment, MLflow 3 files the logged model under
    the Default experiment (no run is active) and writes its files to ./mlruns of the current folder."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    # Restoring an unset URI also unsets MLFLOW_TRACKING_URI in os.environ: put it back.
    env = os.environ.get("MLFLOW_TRACKING_URI")
    experiment_env = os.environ.get("MLFLOW_EXPERIMENT_ID")
    os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_id
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env
        if experiment_env is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = experiment_env


def _already_registered(client: Any, tagged: str | None, name: str, lineage: dict[str, str]) -> str | None:
    """The version this parent run registered before (a resumed sweep) if it is still this trial
    and epoch; None if it must register anew."""
    if not tagged or not tagged.startswith(f"{name}/"):
        return None
    version = tagged.rpartition("/")[2]
    try:
        found = client.get_model_version(name, version).tags
    except Exception:  # noqa: BLE001 - deleted from the registry since: register again
        return None
    same = all(found.get(f"tricksweep.{k}") == lineage[k] for k in ("parent_run_id", "trial", "epoch"))
    return version if same else None


def _maybe_move_alias(client: Any, name: str, version: str, alias: str, lineage: dict[str, str],
                      echo: Callable[[str], None]) -> Registered:
    """Point ``alias`` at ``version`` unless the version holding it did at least as well."""
    from mlflow.exceptions import MlflowException

    metric, mode, value = lineage["metric"], lineage["mode"], float(lineage["metric_value"])
    registered = Registered(name, version, alias, True, metric, value)
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None  # no version holds it yet
    if holder is not None and str(holder.version) != version:
        held = holder.tags
        held_value = _float(held.get("tricksweep.metric_value"))
        if held.get("tricksweep.metric") != metric or held.get("tricksweep.mode") != mode or held_value is None:
            echo(f"{name} version {version} ({metric} {value:.4f}); alias {alias!r} stays on version "
                 f"{holder.version}, which was not chosen by {mode} {metric}")
            return replace(registered, holds_alias=False)
        better = value > held_value if mode == "max" else value < held_value
        if not better:
            echo(f"{name} version {version} ({metric} {value:.4f}); alias {alias!r} stays on version "
                 f"{holder.version} ({metric} {held_value:.4f}): this sweep did not do better")
            return replace(registered, holds_alias=False)
    client.set_registered_model_alias(name, alias, version)
    echo(f"{name} version {version} as models:/{name}@{alias} ({metric} {value:.4f}, "
         f"trial {lineage['trial']}, epoch {lineage['epoch']})")
    return registered


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _resolved_spec(client: Any, run_id: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return yaml.safe_load(Path(client.download_artifacts(run_id, "spec/resolved_spec.yaml", tmp)).read_text())


def _spec_hash(client: Any, run_id: str) -> str:
    """sha256 of the resolved spec as the parent run recorded it (fragments inlined, defaults filled in)."""
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(client.download_artifacts(run_id, "spec/resolved_spec.yaml", tmp)).read_bytes()
    return hashlib.sha256(text).hexdigest()[:16]


def _sweep_name(uri: str, run_id: str) -> str:
    try:
        client = open_client(uri)
        return client.get_experiment(client.get_run(run_id).info.experiment_id).name
    except Exception:  # noqa: BLE001 - only for the hint
        return "NAME"
