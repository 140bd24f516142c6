"""``tricksweep extend NAME [SPEC]``: continue a finished sweep with more trials, a longer epoch
budget or a changed space, into the same MLflow experiment under a new parent run.

    outcome = extend_sweep("quickstart", "sweeps/quickstart_wider.yaml", trials=16)
    sweep = load_sweep(outcome.tracking_uri, "quickstart", lineage=True)
    print("\\n".join(best_lines(sweep)))     # the lineage's best before this extend, and now

The new parent run is tagged ``tricksweep.extends`` (the parent run it continues) and
``tricksweep.lineage`` (every parent run before it, oldest first). Its searcher gets the lineage's
``searchers.History``: the configurations run (none is run again), how each did (TPE is told them
before its first suggestion) and a new seed for random draws. The metric, the mode and the
trainable are the sweep's: a spec that changes one is refused before Ray starts.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tricksweep import leaderboard
from tricksweep import space as dsl
from tricksweep.errors import SpecError, clip
from tricksweep.records import EXTENDS_TAG, LINEAGE_TAG, RecordedSweep, TrialRecord, lineage_of, load_sweep
from tricksweep.searchers import SEED_RANGE, History, Prior, config_key, prior
from tricksweep.spec import LoadedSpec, SweepSpec, format_validation_error, load_spec
from tricksweep.tracking import CODE_PATHS_TAG, STATUS_TAG, ParentRun, resolve_tracking_uri, spec_params

# What makes the lineage one sweep: its trials are ranked against each other on these.
FIXED_FIELDS = ("metric", "mode", "trainable")


@dataclass
class Extension:
    """An extend, planned: the spec it runs, what its searcher is told and the new parent run's tags."""

    loaded: LoadedSpec
    history: History
    tags: dict[str, str]
    storage: str  # Tune's storage root the extended sweep used
    changes: list[str]  # what differs from the run it extends, one line each


def extend_sweep(name: str, spec: str | Path | None = None, *, trials: int | None = None,
                 max_epochs: int | None = None, tracking_uri: str | None = None, address: str | None = None,
                 storage: str | None = None, echo: Callable[[str], None] = print) -> Any:
    """Run ``trials`` new trials of sweep ``name`` (default: the spec's ``budget.trials``), with the
    space and budget of ``spec`` (default: the sweep's own), as a new parent run of its experiment.
    SpecError before Ray starts for an unknown or unfinished sweep or a change to a fixed field."""
    from tricksweep.runner import run_sweep

    uri = resolve_tracking_uri(tracking_uri, None)
    plan = plan_extension(uri, name, spec, trials=trials, max_epochs=max_epochs)
    runs = len(plan.tags[LINEAGE_TAG].split(","))
    searcher = plan.loaded.spec.searcher
    told = (f"; TPE is told those of its {len(plan.history.priors)} that lie in the space" if searcher == "optuna_tpe"
            else f"; {searcher} draws from seed {plan.history.sampler_seed}")
    echo(f"extending sweep {name} (parent run {plan.tags[EXTENDS_TAG]}, a lineage of {runs} run{'s' * (runs > 1)}): "
         f"the {len(plan.history.ran)} configurations it ran are not repeated{told}")
    for line in plan.changes:
        echo(f"  changed: {line}")
    return run_sweep(plan.loaded, tracking_uri=uri, address=address, storage=storage or plan.storage, echo=echo,
                     history=plan.history, parent_tags=plan.tags)


def plan_extension(uri: str, name: str, spec: str | Path | None = None, *, trials: int | None = None,
                   max_epochs: int | None = None) -> Extension:
    """Everything ``extend_sweep`` needs from MLflow and the spec, checked; no Ray."""
    parent = ParentRun.latest(uri, name)
    client = parent.client
    run = client.get_run(parent.run_id)
    tags = run.data.tags
    ended = tags.get(STATUS_TAG, "")
    if run.info.status == "RUNNING" or ended != "completed":
        how = "is still RUNNING" if run.info.status == "RUNNING" else f"ended {ended or run.info.status}"
        raise SpecError(f"sweep = {name!r}: its latest run {run.info.run_name} ({parent.run_id}) {how}; extend "
                        f"continues a completed sweep (finish it first: tricksweep resume {name})")
    folders = tuple(filter(None, tags.get(CODE_PATHS_TAG, "").split(os.pathsep))) or None
    with tempfile.TemporaryDirectory() as tmp:
        old = yaml.safe_load(Path(client.download_artifacts(parent.run_id, "spec/resolved_spec.yaml", tmp)).read_text())
    # The sweep's own spec as a dict: a temporary file would be gone when the new run logs its spec files.
    loaded = load_spec(spec, search_path=None) if spec is not None else load_spec(old, search_path=folders)
    for field in FIXED_FIELDS:
        before, after = old[field], getattr(loaded.spec, field)
        if before != after:
            raise SpecError(f"{field} = {after!r}: sweep {name!r} ran with {field} = {before!r}; extend keeps the "
                            f"metric, mode and trainable of the sweep it continues (a new name starts a new sweep)")
    experiment = loaded.spec.tracking.experiment or loaded.spec.name
    if experiment != parent.experiment_name:
        raise SpecError(f"name = {experiment!r}: the spec names another sweep than {name!r}; extend records into "
                        f"the experiment of the sweep it continues, so the spec's name must be {name!r}")
    loaded = _with_budget(loaded, trials, max_epochs)
    lineage = lineage_of(tags, parent.run_id)
    recorded = load_sweep(uri, name, lineage=True)
    spec_now = loaded.spec
    history = History(
        ran={config_key(_nested(t.params)) for t in recorded.trials},
        priors=priors(recorded.trials, spec_now.mode, spec_now.budget.max_epochs, spec_now.metric),
        # A seed of the lineage's own: new random draws and trial seeds, not the first run's again.
        sampler_seed=random.Random(f"{spec_now.seed}/{len(lineage)}").randrange(SEED_RANGE),
    )
    new_tags = {EXTENDS_TAG: parent.run_id, LINEAGE_TAG: ",".join(lineage),
                "tricksweep.sampler_seed": str(history.sampler_seed)}
    storage_path = tags.get("tricksweep.storage_path", "")
    storage = storage_path.rsplit("/", 1)[0] if "/" in storage_path else "runs"
    return Extension(loaded, history, new_tags, storage, changes(old, loaded))


def _with_budget(loaded: LoadedSpec, trials: int | None, max_epochs: int | None) -> LoadedSpec:
    """``--trials`` / ``--max-epochs`` applied, validated as the spec's own ``budget`` would be."""
    import dataclasses

    if trials is None and max_epochs is None:
        return loaded
    data = loaded.spec.model_dump(mode="json")
    flags = []
    if trials is not None:
        data["budget"]["trials"] = trials
        flags.append("--trials")
    if max_epochs is not None:
        data["budget"]["max_epochs"] = max_epochs
        flags.append("--max-epochs")
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(f"{'/'.join(flags)}: {format_validation_error(err, SweepSpec)}") from None
    return dataclasses.replace(loaded, spec=spec)


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"optimizer.lr": 0.1, "seed": 3}`` -> ``{"optimizer": {"lr": 0.1}}`` (the seed left out)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if key == "seed":
            continue
        *groups, leaf = key.split(".")
        node = nested
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = value
    return nested


def priors(trials: list[TrialRecord], mode: str, max_epochs: int, metric: str) -> list[Prior]:
    """One ``Prior`` per configuration the lineage ran (its repeats together)."""
    groups: dict[tuple, list[TrialRecord]] = {}
    for trial in trials:
        groups.setdefault(config_key(_nested(trial.params)), []).append(trial)
    return [
        prior(_nested(members[0].params), [(t.status, t.history.get(metric, {})) for t in members],
              mode=mode, max_epochs=max_epochs, source=",".join(t.name for t in members))
        for members in groups.values()
    ]


def changes(old: dict[str, Any], loaded: LoadedSpec) -> list[str]:
    """The settings and space entries that differ from the run extended: ``key: old -> new``, the
    space leaf by leaf (``space.optimizer[adam].lr: loguniform [0.0001, 0.01] -> ...``)."""
    before = {k: v for k, v in spec_params({k: v for k, v in old.items() if k != "space"}, {}).items()
              if not k.startswith("space.")}
    after = {k: v for k, v in spec_params(loaded.spec.model_dump(mode="json"), {}).items()
             if not k.startswith("space.")}
    before.update(_leaves(dsl.parse(old.get("space") or {}), "space"))
    after.update(_leaves(loaded.space, "space"))
    keys = sorted(k for k in before.keys() | after.keys()
                  if str(before.get(k)) != str(after.get(k)) and k != "description")
    return [clip(f"{k}: {before.get(k, '(none)')} -> {after.get(k, '(none)')}", 300) for k in keys]


def _leaves(node: dsl.Node, path: str) -> dict[str, str]:
    """A parsed space as ``path: DSL text`` per leaf; a choice between blocks as its options, then
    each block under ``path[option]``."""
    if isinstance(node, dict):
        return {k: v for key, child in node.items() for k, v in _leaves(child, f"{path}.{key}").items()}
    if isinstance(node, dsl.Choice) and any(isinstance(o, dict) for o in node.options):
        labels = dsl.option_labels(node)
        out = {path: f"{'grid' if node.grid else 'choice'} of {', '.join(map(str, labels))}"}
        for label, option in zip(labels, node.options, strict=True):
            out.update(_leaves(option, f"{path}[{label}]"))
        return out
    return {path: dsl.leaf_text(node)}


def best_lines(sweep: RecordedSweep) -> list[str]:
    """The lineage's best before its latest run and after it, and where each came from."""
    metric, mode = sweep.metric, sweep.mode
    latest = f"g{len(sweep.lineage) - 1}/"
    repeats = sweep.repeats > 1
    rows = leaderboard.rank(sweep.trials, metric, mode, repeats=repeats)
    earlier = leaderboard.rank([t for t in sweep.trials if not t.name.startswith(latest)], metric, mode,
                               repeats=repeats)
    keys = leaderboard.varying_keys(rows)

    def said(row: leaderboard.ConfigRow | None) -> str:
        if row is None or row.mean is None:
            return "none"
        return (f"{leaderboard.value_text(row)} ({row.best_trial.name}, epoch {row.best_epoch}: "
                f"{leaderboard.settings_text(row, keys)})")

    old, new = (earlier[0] if earlier else None), (rows[0] if rows else None)
    out = [f"lineage of {len(sweep.lineage)} runs (g0 the first, {latest[:-1]} this one), "
           f"{len(sweep.trials)} trials; best {metric} before: {said(old)}"]
    if new is not None and new.best_trial.name.startswith(latest) and new.mean is not None:
        gain = new.mean - (old.mean if old is not None and old.mean is not None else 0.0)
        out.append(f"best {metric} now: {said(new)}: {gain:+.4f}, found by this extend")
    else:
        this = next((r for r in rows if r.best_trial.name.startswith(latest)), None)
        out.append(f"best {metric} unchanged; this extend's best: {said(this)}")
    return out
