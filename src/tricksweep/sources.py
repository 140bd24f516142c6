"""Pretrained-weight sources kept in MLflow, resolved to local files before any trial starts.

Trainables never import MLflow. A space may name ``init.source`` as

- ``{sweep: pretrain_digits}``: the best model of that sweep's latest finished run (its parent
  run's ``best_checkpoint/state.pt``, with ``best_config.yaml`` beside it);
- ``{mlflow: runs:/<run_id>/<path>}`` or ``{mlflow: models:/<name>/<version>}`` (also as a bare
  string): an artifact, a file or a folder holding one ``.pt``/``.pth`` file;

and ``resolve_sources`` downloads each one into ``~/.cache/tricksweep/sources/`` and rewrites the
space to that file's absolute path, so trials load a local file. Relative file paths become
absolute too (trials run with cwd = their trial dir); torchvision weight names stay as they are.
The files themselves travel to the trials with the trainable (``shipped_files`` here, ``trial.localize``):
a trial on another node of a cluster reads its node's copy, not the driver's disk.

    loaded = resolve_sources(load_spec("sweeps/transfer_digits.yaml"), "sqlite:////abs/mlflow.db")
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tricksweep import space as dsl
from tricksweep.errors import SpecError, did_you_mean
from tricksweep.spec import LoadedSpec, check_against_trainable
from tricksweep.tracking import SWEEP_TAG, open_client
from tricksweep.trial import ShippedFile, sources_cache

STATE_FILE = "state.pt"
BEST_DIR = "best_checkpoint"


def resolve_sources(loaded: LoadedSpec, tracking_uri: str, echo: Callable[[str], None] = print) -> LoadedSpec:
    """``loaded`` with every ``source`` in its space made a local absolute path; SpecError (one
    line) when a source cannot be found. Unchanged when there is nothing to resolve."""
    resolver = _Resolver(tracking_uri, echo)
    space = resolver.parsed(loaded.space, "space")
    if not resolver.changed:
        return loaded
    resolved = dataclasses.replace(loaded, space=space, raw_space=resolver.raw(loaded.raw_space))
    # The files are here now: the architecture is checked against them.
    check_against_trainable(resolved.spec, space, resolved.trainable)
    return resolved


def shipped_files(space: dsl.Node) -> dict[str, ShippedFile]:
    """Every weights file that the (resolved) space names as a ``source`` and that this machine
    has, by its absolute path, put in Ray's object store (Ray must be running). Trials on other
    nodes cannot read the driver's disk (its source cache, or a file beside the spec). A path
    missing here is left out: it may exist on the workers, and the trial says so if not."""
    import ray

    paths: set[str] = set()

    def visit(node: dsl.Node, under_source: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, under_source or key == "source")
        elif isinstance(node, dsl.Choice):
            for option in node.options:
                visit(option, under_source)
        elif isinstance(node, dsl.Const):
            visit(node.value, under_source)
        elif under_source and isinstance(node, str) and os.path.isabs(node) and os.path.isfile(node):
            paths.add(node)

    visit(space, False)
    files = {}
    driver = ray.get_runtime_context().get_node_id() if paths else ""
    for path in sorted(paths):
        data = Path(path).read_bytes()
        files[path] = ShippedFile(Path(path).name, hashlib.sha256(data).hexdigest()[:20], ray.put(data), driver)
    return files


class _Resolver:
    def __init__(self, tracking_uri: str, echo: Callable[[str], None]):
        self.uri = tracking_uri
        self.echo = echo
        self.done: dict[str, Any] = {}
        self.changed = False

    # -- walking the parsed space and the raw YAML in step ----------------------------------

    def parsed(self, node: dsl.Node, path: str) -> dsl.Node:
        if isinstance(node, dict):
            return {
                k: self.parsed_source(v, f"{path}.{k}") if k == "source" else self.parsed(v, f"{path}.{k}")
                for k, v in node.items()
            }
        if isinstance(node, dsl.Choice):
            return dataclasses.replace(
                node, options=tuple(self.parsed(o, f"{path}[{i}]") for i, o in enumerate(node.options))
            )
        return node

    def parsed_source(self, node: dsl.Node, path: str) -> dsl.Node:
        if isinstance(node, dsl.Choice):
            return dataclasses.replace(
                node, options=tuple(self.parsed_source(o, f"{path}[{i}]") for i, o in enumerate(node.options))
            )
        if isinstance(node, (dict, dsl.Const)):
            return dsl.Const(self.resolve(_plain(node), path))
        return node

    def raw(self, value: Any) -> Any:
        if isinstance(value, dict) and not dsl.is_domain(value):
            return {k: self.raw_source(v) if k == "source" else self.raw(v) for k, v in value.items()}
        if dsl.is_domain(value) and isinstance(next(iter(value.values())), list):
            kind, options = next(iter(value.items()))
            return {kind: [self.raw(o) for o in options]}
        return value

    def raw_source(self, value: Any) -> Any:
        if dsl.is_domain(value):
            kind, arg = next(iter(value.items()))
            if kind in ("choice", "grid") and isinstance(arg, list):
                return {kind: [self.raw_source(o) for o in arg]}
            return value if kind != "const" else self.done.get(_key(arg), arg)
        return self.done.get(_key(value), value)

    # -- one source -------------------------------------------------------------------------

    def resolve(self, value: Any, path: str) -> Any:
        key = _key(value)
        if key not in self.done:
            resolved = self._resolve(value, path)
            self.changed |= resolved != value
            self.done[key] = resolved
        return self.done[key]

    def _resolve(self, value: Any, path: str) -> Any:
        from trainables.data import absolute
        from trainables.init import TORCHVISION_WEIGHTS

        if isinstance(value, str) and value.startswith(("runs:/", "models:/")):
            value = {"mlflow": value}
        if isinstance(value, dict) and set(value) == {"sweep"} and isinstance(value["sweep"], str):
            return self._from_sweep(value["sweep"], path)
        if isinstance(value, dict) and set(value) == {"mlflow"} and isinstance(value["mlflow"], str):
            return self._from_mlflow(value["mlflow"], path)
        if isinstance(value, str) and value.strip() and not TORCHVISION_WEIGHTS.match(value):
            return absolute(value)
        return value  # a torchvision weights name, or something the trainable's validator will reject

    def _from_sweep(self, name: str, path: str) -> str:
        from mlflow.exceptions import MlflowException

        where = f"{path} = {{sweep: {name}}}"
        client = open_client(self.uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            names = [e.name for e in client.search_experiments()]
            raise SpecError(
                f"{where}: no sweep '{name}' in the MLflow store {self.uri}{did_you_mean(name, names)}; "
                f"run it first (tricksweep run sweeps/{name}.yaml) with the same tracking URI"
            )
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{SWEEP_TAG}` = 'parent' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
        for run in runs:  # the latest finished run that recorded a best checkpoint
            run_id = run.info.run_id
            dest = sources_cache() / "runs" / run_id
            state = dest / BEST_DIR / STATE_FILE
            if not state.is_file():  # a finished run's artifacts never change: download once
                tmp = Path(tempfile.mkdtemp(dir=_made(sources_cache())))
                try:
                    with _no_progress_bar():
                        client.download_artifacts(run_id, BEST_DIR, str(tmp))
                    if not (tmp / BEST_DIR / STATE_FILE).is_file():
                        continue
                    shutil.rmtree(dest, ignore_errors=True)
                    _made(dest.parent)
                    tmp.rename(dest)
                except (MlflowException, OSError):
                    continue  # no best_checkpoint artifact (e.g. every trial failed)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            best = {k: v for k, v in run.data.metrics.items() if k.startswith("best_")}
            shown = ", ".join(f"{k} {v:.4f}" for k, v in best.items())
            self.echo(f"{path}: sweep {name} -> run {run_id} ({run.info.run_name}{', ' + shown if shown else ''}) "
                      f"-> {state}")
            return str(state)
        raise SpecError(
            f"{where}: no finished run of sweep '{name}' with a {BEST_DIR}/{STATE_FILE} artifact in {self.uri}; "
            f"run the sweep to the end first (tricksweep run sweeps/{name}.yaml)"
        )

    def _from_mlflow(self, artifact_uri: str, path: str) -> str:
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        where = f"{path} = {{mlflow: {artifact_uri}}}"
        dest = sources_cache() / "mlflow" / hashlib.sha1(artifact_uri.encode()).hexdigest()[:16]
        shutil.rmtree(dest, ignore_errors=True)  # models:/<name>/latest may move: fetch afresh
        open_client(self.uri)  # a store MLflow has to create is created once, under the lock
        try:
            with _no_progress_bar():
                local = Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=artifact_uri, dst_path=str(_made(dest)), tracking_uri=self.uri
                ))
        except (MlflowException, OSError) as err:
            reason = " ".join(str(err).split())[:300]
            raise SpecError(f"{where}: cannot download it from {self.uri} ({reason})") from None
        if local.is_dir():
            files = sorted(p for p in local.rglob("*") if p.suffix in (".pt", ".pth") and p.is_file())
            named = [p for p in files if p.name == STATE_FILE]
            if len(named) == 1 or len(files) == 1:
                local = (named or files)[0]
            else:
                found = ", ".join(str(p.relative_to(local)) for p in files) or "none"
                raise SpecError(f"{where}: expected one .pt/.pth weights file in it, found: {found}; point at the file")
        self.echo(f"{path}: {artifact_uri} -> {local}")
        return str(local.resolve())


def _plain(node: dsl.Node) -> Any:
    """A parsed block or constant as the plain YAML value it came from."""
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, dsl.Const):
        return node.value
    return node


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def _no_progress_bar():
    # MLflow draws a tqdm bar per download; the sweep's console is ours.
    saved = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved
