"""Sweep specs: YAML files (or dicts) validated before anything runs (no Ray here).

    loaded = load_spec("sweeps/quickstart.yaml")   # raises SpecError with a one-line message
    loaded.trials_total, loaded.spec.metric, loaded.trainable.target
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.contract import ContractError, Trainable
from tricksweep import search
from tricksweep import space as dsl
from tricksweep.errors import ELLIPSIS, SpecError, clip, did_you_mean, shown, unknown_name


class Strict(BaseModel):
    # strict: `trials: true` is not 1, `trials: 2.5` is not 2; allow_inf_nan: every float is finite.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# A sweep's name becomes its Tune folder <storage>/<name>-YYYYmmdd-HHMMSS (one path component:
# NAME_MAX, 255 bytes), its report folder reports/<name> and its MLflow experiment (500 characters).
NAME_MAX = 255
RUN_NAME_SUFFIX = len("-YYYYmmdd-HHMMSS")
MAX_NAME_LENGTH = NAME_MAX - RUN_NAME_SUFFIX


class Budget(Strict):
    trials: int = Field(ge=1, description="configurations sampled (random), or passes over the grid (grid)")
    max_epochs: int = Field(ge=1, description="epochs a trial may run at most; ASHA's max_t")
    time_limit_s: float | None = Field(
        None, gt=0, description="wall-clock seconds; then no new trials start and running ones stop"
    )
    max_total_epochs: int | None = Field(
        None, ge=1, description="epochs summed over all trials; once spent no new trial starts (running ones finish)"
    )


class Asha(Strict):
    type: Literal["asha"] = "asha"
    grace_epochs: int = Field(1, ge=1, description="epochs every trial gets before it can be stopped")
    reduction_factor: float = Field(3.0, ge=2, description="keep the top 1/reduction_factor at each rung")


class NoScheduler(Strict):
    type: Literal["none"]


class Resources(Strict):
    cpu: float = Field(1.0, gt=0, description="CPUs per trial; also the trial's torch threads")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; fractions pack several trials on one GPU")
    gpu_memory: str | None = Field(
        None,
        description="GPU memory per trial instead of a fraction, packing trials by what they use: a size "
        "(12GiB, 800MiB; binary units) asked of every trial, or `auto`: the first trial of each configuration "
        "shape (every sampled value but floats and the seed) runs on a whole GPU and its first epoch's peak "
        "(torch max_memory_reserved + CUDA context + 10%) becomes the need of the shape's later trials. "
        "Nodes advertise gpu_memory_mib (cluster.yaml, local Ray with CUDA); a trial out of GPU memory is "
        "retried from its last checkpoint with twice its share, up to a whole GPU, then ends `infeasible`",
    )
    custom: dict[str, float] = Field(default_factory=dict, description="Ray custom resources per trial, e.g. {spot: 1}")

    @field_validator("gpu_memory")
    @classmethod
    def _memory_size(cls, value: str | None) -> str | None:
        from tricksweep.gpu import parse_size

        if value is not None and value != "auto":
            parse_size(value)  # ValueError: the rule, shown with the field and value
        return value

    @model_validator(mode="after")
    def _memory_or_fraction(self) -> Resources:
        if self.gpu_memory is not None and self.gpu > 0:
            raise ValueError("give `gpu` or `gpu_memory`, not both: with gpu_memory the GPU fraction follows "
                             "from the memory asked for")
        if self.gpu_memory is not None and "gpu_memory_mib" in self.custom:
            raise ValueError("custom.gpu_memory_mib is what gpu_memory asks for; give gpu_memory only")
        return self

    @property
    def gpu_memory_mib(self) -> int | None:
        """The fixed request in MiB; None for `auto` or without gpu_memory."""
        from tricksweep.gpu import parse_size

        return parse_size(self.gpu_memory) if self.gpu_memory not in (None, "auto") else None


class Tracking(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    experiment: str | None = Field(
        None, min_length=1, max_length=NAME_MAX,
        description=f"MLflow experiment (default: the sweep name); also the report folder, so <= {NAME_MAX} characters",
    )


class Checkpointing(Strict):
    """Which epochs of a trial are checkpointed: every one that improves `metric` (the best epoch is
    what the sweep reports and registers), the last one, and the first one `every_s` seconds after
    the last checkpoint (a lost node or driver costs a trial at most that much work plus one epoch)."""

    every_s: float | None = Field(
        60.0, gt=0, description="wall seconds between checkpoints besides the improving epochs and the last "
        "(the work a crash may cost a trial, plus one epoch; null = no time-based ones)",
    )
    every_epochs: int | None = Field(
        None, ge=1, description="also every this many epochs (1 = every epoch, as before; null = none besides)"
    )
    keep: Literal["best_and_last", "all"] = Field(
        "best_and_last",
        description="checkpoints left per trial once the sweep is over (all are kept while it runs, for resume)",
    )


class Code(Strict):
    """The folder your code lives in, shipped to every node when the sweep runs on a cluster."""

    dir: str | None = Field(
        None,
        description="folder searched first for import strings and shipped to every node with --address "
        "and submit; relative to the spec file (default: the folders the import strings were found in)",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description=".gitignore-style patterns never shipped, on top of .gitignore files and the defaults "
        "(.git, .venv, __pycache__, runs/, mlruns/, mlflow.db, *.pt, ...)",
    )


class Registration(Strict):
    """Where the sweep's best model goes in MLflow's model registry (``registry: false``: nowhere)."""

    model: str | None = Field(
        None, min_length=1, description="registered model name (default: the sweep's name)"
    )
    alias: str = Field(
        "best",
        pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$",
        description="alias given to the new version when it beats the version holding it (models:/NAME@ALIAS)",
    )

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, alias: str) -> str:
        # MLflow reserves these: `latest` and `v<N>` already name versions in models:/ URIs.
        if alias.lower() == "latest" or (alias[:1] in "vV" and alias[1:].isdigit()):
            raise ValueError("MLflow reserves `latest` and `v<number>` as aliases")
        return alias


class Claim(Strict):
    """A claim the sweep tests: ``param`` at ``treatment`` vs ``control`` values, on ``measure``.

    ``measure``: ``best`` (the sweep's metric at each trial's best epoch), ``METRIC@E`` (METRIC at
    epoch E), ``gap`` (val_loss - train_loss at the last epoch: overfitting) or ``overshoot``
    (val_loss at the last epoch - lowest val_loss: how far past the validation minimum it trained).
    With ``versus_where`` the claim is an interaction: the effect within ``where`` minus the
    effect within ``versus_where`` (``augmentation helps most when data is scarce``).
    """

    claim: str = Field(description="the claim in plain words")
    param: str = Field(description="flattened trial parameter, e.g. optimizer.name or batch_norm")
    treatment: list[Any] = Field(min_length=1, description="values of `param` the claim is about")
    control: list[Any] = Field(min_length=1, description="values of `param` they are compared with")
    measure: str = Field(
        "best", pattern=r"^(best|gap|overshoot|[a-z_]+@[0-9]+)$", description="what is compared per trial"
    )
    expect: Literal["higher", "lower"] = Field(
        description="the claim holds if treatment - control is higher/lower than 0"
    )
    where: dict[str, Any] | list[dict[str, Any]] = Field(
        default_factory=dict,
        description="only trials with these params: value, [values], {min, max} or {not}; a list: any of them",
    )
    versus_where: dict[str, Any] | list[dict[str, Any]] | None = Field(
        None, description="interaction: subtract the effect within these trials"
    )
    adjust: bool = Field(
        True,
        description="estimate with the other swept parameters as covariates (less noise); "
        "false: plain difference of means",
    )


class SweepSpec(Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_NAME_LENGTH,
        description=f"sweep name: letters, digits, _ . -; at most {MAX_NAME_LENGTH} characters (it names folders)",
    )
    description: str = ""
    trainable: str = Field(
        "classifier", description="a registered name (tricksweep ls) or an import string 'pkg.module[:function]'"
    )
    dataset: dict[str, Any] = Field(default_factory=lambda: {"name": "digits"})
    metric: str
    mode: Literal["max", "min"]
    budget: Budget
    scheduler: Asha | NoScheduler = Field(default_factory=Asha, discriminator="type")
    searcher: str = Field("random", description="a name in tricksweep.search.SEARCHERS: random, grid, optuna_tpe")
    repeats: int = Field(1, ge=1, description="seeds per sampled configuration; the leaderboard ranks by their mean")
    resources: Resources = Field(default_factory=Resources)
    max_concurrent_trials: int | None = Field(None, ge=1, description="default: as many as resources allow")
    max_failures: int = Field(0, ge=-1, description="retries of a failed trial from its checkpoint (-1 = forever)")
    stop_on_repeated_errors: int = Field(
        3, ge=0, description="stop the sweep when its first N trials to end all failed with the same error (0: never)"
    )
    seed: int = 0
    tracking: Tracking = Field(default_factory=Tracking)
    storage: str | None = Field(None, description="Tune storage path (default: <cwd>/runs); shared on a cluster")
    code: Code = Field(default_factory=Code, description="your code's folder and what of it a cluster gets")
    checkpoint: Checkpointing = Field(default_factory=Checkpointing)
    registry: Registration | None = Field(
        default_factory=Registration,
        description="register the best trial's best epoch as an MLflow model at the end: "
        "{model, alias}; false = do not register",
    )
    include: list[str] = Field(default_factory=list, description="fragments from search_spaces/, by file name")
    space: dict[str, Any] = Field(default_factory=dict)
    claims: list[Claim] = Field(
        default_factory=list, description="claims `tricksweep report` tests on the finished sweep"
    )

    @field_validator("searcher")
    @classmethod
    def _known_searcher(cls, name: str) -> str:
        if name not in search.SEARCHERS:
            valid = ", ".join(search.SEARCHERS)
            raise ValueError(f"unknown searcher{did_you_mean(name, search.SEARCHERS)}; valid: {valid}")
        return name

    @field_validator("registry", mode="before")
    @classmethod
    def _registry_switch(cls, value: Any) -> Any:
        # `registry: false` turns it off, `registry: true` means every default.
        if isinstance(value, bool):
            return {} if value else None
        return value

    @model_validator(mode="after")
    def _grace_within_budget(self) -> SweepSpec:
        if isinstance(self.scheduler, Asha) and self.scheduler.grace_epochs > self.budget.max_epochs:
            raise ValueError(
                f"scheduler.grace_epochs = {self.scheduler.grace_epochs}: must be <= budget.max_epochs "
                f"({self.budget.max_epochs})"
            )
        return self


@dataclass
class LoadedSpec:
    """A validated spec with its fragments merged, its space parsed and its trainable imported."""

    spec: SweepSpec
    path: Path | None  # the spec file; None for a spec given as a dict
    space: dict  # parsed DSL tree (tricksweep.space)
    raw_space: dict  # merged YAML of fragments + overrides
    trainable: Trainable
    code_paths: tuple[str, ...]  # folders user code is imported from, on the driver and on the workers
    fragments: dict[str, Path] = field(default_factory=dict)

    @property
    def grid_points(self) -> int:
        return search.grid_points(self.space, self.spec.searcher)

    @property
    def trials_total(self) -> int:
        return self.spec.budget.trials * self.grid_points * self.spec.repeats

    def smoke(self) -> LoadedSpec:
        """2 trials x 2 epochs, to check in seconds that the spec runs end to end (with repeats: 1
        configuration x 2 seeds); every grid becomes a random choice, so grids stay at 2 trials."""
        spec = self.spec
        repeats = min(spec.repeats, 2)
        budget = {"trials": 2 // repeats, "max_epochs": 2, "time_limit_s": None, "max_total_epochs": None}
        update: dict[str, Any] = {"budget": spec.budget.model_copy(update=budget), "repeats": repeats}
        if isinstance(spec.scheduler, Asha):
            update["scheduler"] = spec.scheduler.model_copy(update={"grace_epochs": 1})
        if smoke_as := search.entry(spec.searcher).smoke_as:
            update["searcher"] = smoke_as
        return dataclasses.replace(self, spec=spec.model_copy(update=update), space=dsl.without_grids(self.space))

    def resolved_yaml(self) -> str:
        """The spec as run: fragments inlined, defaults filled in."""
        data = self.spec.model_dump(mode="json")
        data["space"] = self.raw_space
        data["include"] = []
        return yaml.safe_dump(data, sort_keys=False)


def fragment_dirs(spec_path: Path | None) -> list[Path]:
    """Where ``include`` names are looked up: next to the spec's folder, then the current folder
    (only there for a spec given as a dict)."""
    dirs = [spec_path.resolve().parent.parent / "search_spaces"] if spec_path is not None else []
    dirs.append(Path.cwd() / "search_spaces")
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def code_paths(spec_path: Path | None, code_dir: str | None = None) -> tuple[str, ...]:
    """Where a trainable's import string is looked up, in order: the spec's ``code.dir``, the
    current folder, the spec's folder and the folder above it (``sweeps/..``, a project's root);
    the cwd only for a dict. In a Ray Job that shipped the code (``submit``), its copy comes first."""
    from tricksweep.shipping import shipped_code_dirs

    folders = [Path(f) for f in shipped_code_dirs()]
    if code_dir is not None and not folders:
        folders.append(Path(code_dir))
    folders.append(Path.cwd())
    if spec_path is not None:
        folder = spec_path.resolve().parent
        folders += [folder, folder.parent]
    return tuple(dict.fromkeys(str(f) for f in folders))


def available_fragments(spec_path: Path | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(fragment_dirs(spec_path)):
        found.update({p.stem: p for p in sorted(d.glob("*.yaml"))})
    return found


try:
    from yaml._yaml import CParser

    class _Parsed(yaml.composer.Composer, CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """libyaml's parser (a few times faster on a large file) under PyYAML's Python composer,
        which _UniqueKeyLoader bounds (libyaml's own composer recurses in C, unchecked)."""

        def __init__(self, stream: str):
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

except ImportError:  # PyYAML built without libyaml
    _Parsed = yaml.SafeLoader  # type: ignore[misc, assignment]


class _UniqueKeyLoader(_Parsed):
    """A safe loader that rejects a key given twice in one mapping (PyYAML keeps the last silently),
    and nesting deeper than MAX_YAML_DEPTH as soon as it is read, before the rest is parsed."""

    depth = 0
    path = "YAML"  # the file, for messages

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise SpecError(f"{self.path}: YAML nested deeper than {MAX_YAML_DEPTH} levels "
                                f"at line {mark.line + 1}, the limit")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {shown(key)} defined twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Parsing is bounded: a few hundred bytes of nested YAML aliases ("billion laughs") expand to
# billions of nodes, and a spec file has no business being megabytes long.
MAX_YAML_BYTES = 1_000_000  # a spec or fragment file
MAX_YAML_NODES = 100_000  # scalars, lists and mappings, every alias counted as the copy it stands for
MAX_YAML_DEPTH = 50  # levels of nesting
_OPEN_BRACKETS = re.compile(rf"(?:[\[{{]\s*){{{MAX_YAML_DEPTH + 1}}}")


def read_yaml(path: Path, what: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such {what} file") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read {what} file ({err.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise SpecError(f"{path}: the {what} file is larger than {MAX_YAML_BYTES:,} bytes, the limit for a YAML file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: the {what} file is not UTF-8 text (byte {err.start})") from None
    if not text.strip():
        raise SpecError(f"{path}: the {what} file is empty; it needs a YAML mapping")
    if _OPEN_BRACKETS.search(text):  # the common nesting bomb, found before PyYAML's scanner reads it
        raise SpecError(f"{path}: YAML nested deeper than {MAX_YAML_DEPTH} levels, the limit")
    loader = _UniqueKeyLoader(text)
    loader.path = str(path)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_expanded_size(node, path)
        data = loader.construct_document(node) if node is not None else None
    except SpecError:
        raise
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SpecError(f"{path}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise SpecError(f"{path}: invalid YAML: nested deeper than {MAX_YAML_DEPTH} levels, the limit") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise SpecError(f"{path}: invalid YAML: {err}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the {what} must be a YAML mapping of keys, got {type(data).__name__}")
    return data


def _check_expanded_size(root: yaml.Node, path: Path) -> None:
    """Reject a node graph whose expansion (an alias counts as a copy of its anchor's value) passes
    MAX_YAML_NODES values or MAX_YAML_DEPTH levels, before anything is constructed. The composer
    shares one node per anchor, so size and height are memoised per node: the check is linear in
    the file, not in its expansion (and an anchor is always walked before its aliases)."""
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels) once expanded
    in_progress: set[int] = set()

    def measure(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in measured:
            return measured[key]
        if key in in_progress:
            mark = node.start_mark
            raise SpecError(f"{path}: invalid YAML at line {mark.line + 1}: an alias refers to a value containing it")
        in_progress.add(key)
        children = ([child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        sizes = [measure(child) for child in children]
        in_progress.discard(key)
        size, height = 1 + sum(s for s, _ in sizes), 1 + max((h for _, h in sizes), default=0)
        if size > MAX_YAML_NODES:
            raise SpecError(f"{path}: YAML expands to more than {MAX_YAML_NODES:,} values (aliases counted as the "
                            f"copies they stand for), the limit; write the values out or use fewer aliases")
        if height > MAX_YAML_DEPTH:
            raise SpecError(f"{path}: YAML nested deeper than {MAX_YAML_DEPTH} levels (aliases expanded), the limit")
        measured[key] = (size, height)
        return size, height

    measure(root)


def load_spec(source: str | Path | dict[str, Any], *, search_path: tuple[str, ...] | None = None) -> LoadedSpec:
    """Read, validate and resolve a sweep spec: a YAML file, or a dict of the same keys (its
    ``include`` fragments and import strings are then looked up from the current folder).
    ``search_path`` replaces the folders user code is imported from (a resumed sweep's own).
    Raises SpecError with a one-line message."""
    if isinstance(source, dict):
        path, raw = None, source
    else:
        path = Path(source)
        raw = read_yaml(path, "sweep spec")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, SweepSpec)) from None

    dsl.finite(spec.dataset, "dataset")
    spec = _with_code_dir(spec, path)
    folders = search_path or code_paths(path, spec.code.dir)
    trainable = resolve_trainable(spec.trainable, folders)
    raw_space, fragments = _merge_fragments(spec, path)
    parsed = dsl.parse(raw_space)
    check_against_trainable(spec, parsed, trainable)
    loaded = LoadedSpec(spec, path, parsed, raw_space, trainable, folders, fragments)
    search.check_space(parsed, spec.searcher, spec.repeats)
    _check_claims(spec, parsed)
    return loaded


def _with_code_dir(spec: SweepSpec, path: Path | None) -> SweepSpec:
    """``code.dir`` as an absolute folder that exists (relative to the spec's folder, or the cwd)."""
    from tricksweep.shipping import shipped_code_dirs

    if spec.code.dir is None or shipped_code_dirs():
        return spec  # in a job that shipped the code, the folder is its copy, not the submitter's path
    base = path.resolve().parent if path is not None else Path.cwd()
    folder = (base / Path(spec.code.dir).expanduser()).resolve()
    if not folder.is_dir():
        raise SpecError(f"code.dir = {spec.code.dir!r}: no such folder ({folder})")
    return spec.model_copy(update={"code": spec.code.model_copy(update={"dir": str(folder)})})


def resolve_trainable(name: str, folders: tuple[str, ...]) -> Trainable:
    """The trainable a spec names: a registered name, else an import string looked up with
    ``folders`` first on sys.path (they stay there: the user's module may import more later)."""
    from trainables import TRAINABLES
    from trainables.contract import load

    target = TRAINABLES.get(name, name)
    for folder in reversed(folders):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        return load(target)
    except ContractError as err:
        raise SpecError(f"trainable = {shown(name)}: {clip(str(err), 300)}") from None
    except ModuleNotFoundError as err:
        if name not in TRAINABLES and "." not in name and ":" not in name:
            # A bare word is more likely a misspelt registered name than a top-level module.
            registered = ", ".join(sorted(TRAINABLES))
            raise SpecError(f"trainable = {shown(name)}: unknown trainable{did_you_mean(name, TRAINABLES)}; "
                            f"registered: {registered}; or an import string 'package.module[:function]' "
                            f"(no module named {shown(err.name)} in {os.pathsep.join(folders)} "
                            "or the installed packages)") from None
        raise SpecError(f"trainable = {shown(name)}: no module named {shown(err.name)} in {os.pathsep.join(folders)} "
                        "or the installed packages") from None


def _check_claims(spec: SweepSpec, parsed: dict) -> None:
    names = dsl.param_names(parsed) | {"seed"}
    for i, claim in enumerate(spec.claims):
        def keys_of(where: dict | list | None) -> list[str]:
            return [k for w in (where if isinstance(where, list) else [where or {}]) for k in w]

        for field_name, keys in (("param", [claim.param]), ("where", keys_of(claim.where)),
                                 ("versus_where", keys_of(claim.versus_where))):
            for key in keys:
                if key not in names:
                    raise SpecError(f"claims[{i}].{field_name} = {shown(key)}: not a parameter of this space"
                                    f"{did_you_mean(key, sorted(names))}")


def _merge_fragments(spec: SweepSpec, path: Path | None) -> tuple[dict, dict[str, Path]]:
    available = available_fragments(path)
    merged: dict = {}
    owner: dict[str, str] = {}  # flattened parameter path -> fragment that defined it
    used: dict[str, Path] = {}
    for name in spec.include:
        if name not in available:
            raise unknown_name("include", name, "fragment", available)
        fragment = read_yaml(available[name], "search-space fragment")
        for key in _leaf_paths(fragment):
            if key in owner:
                raise SpecError(
                    f"include: parameter {shown(key)} is defined by both fragments '{owner[key]}' and '{name}'; "
                    f"define it once, or override it under space:"
                )
            owner[key] = name
        merged = dsl.merge(merged, fragment)
        used[name] = available[name]
    return dsl.merge(merged, spec.space), used


def _leaf_paths(raw: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in raw.items():
        if isinstance(value, dict) and not dsl.is_domain(value):
            paths += _leaf_paths(value, f"{prefix}{key}.")
        else:
            paths.append(f"{prefix}{key}")
    return paths


def check_against_trainable(spec: SweepSpec, parsed: dict, trainable: Trainable) -> None:
    """The metric against the trainable's declared ones; with a pydantic Config, the dataset and
    every corner of the space validated through it (a plain-dict trainable gets the DSL's checks)."""
    if trainable.metrics is not None and spec.metric not in trainable.metrics:
        raise unknown_name("metric", spec.metric, "metric", trainable.metrics)
    for reserved in ("epochs", "device", "checkpoint_every"):
        if reserved in parsed:
            raise SpecError(f"space.{reserved}: set by the engine from the spec; remove it from the space")
    config_cls: type[BaseModel] | None = trainable.config
    if config_cls is None:
        return
    takes_data = "data" in config_cls.model_fields
    if takes_data:
        try:
            data = config_cls.model_validate({"data": spec.dataset}).data
        except ValidationError as err:
            raise SpecError(format_validation_error(err, config_cls, rename={"data": "dataset"})) from None
        _no_bool_as_number(spec.dataset, data, "dataset")
        spec.dataset = data.model_dump(mode="json", exclude_unset=True)  # relative roots made absolute
    for corner in dsl.corners(parsed):
        # space.data: swept dataset fields
        values = {**corner, "data": {**spec.dataset, **corner.get("data", {})}} if takes_data else corner
        try:
            validated = config_cls.model_validate(values)
        except ValidationError as err:
            raise SpecError(format_validation_error(err, config_cls, prefix="space.")) from None
        _no_bool_as_number(corner, validated, "space")


def _no_bool_as_number(given: Any, validated: Any, path: str) -> None:
    """SpecError where a trainable's config took a boolean as a number (pydantic reads ``lr: true``
    as 1.0 unless the field is strict): walks what was given beside what it became."""
    if isinstance(given, bool):
        if isinstance(validated, (int, float)) and not isinstance(validated, bool):
            raise SpecError(f"{clip(path)} = {given}: must be a number, not a boolean")
    elif isinstance(given, dict):
        for key, child in given.items():
            target = validated.get(key) if isinstance(validated, dict) else getattr(validated, str(key), None)
            if target is not None:
                _no_bool_as_number(child, target, f"{path}.{key}")
    elif isinstance(given, (list, tuple)) and isinstance(validated, (list, tuple)):
        for i, (child, target) in enumerate(zip(given, validated, strict=False)):
            _no_bool_as_number(child, target, f"{path}[{i}]")


def format_validation_error(
    err: ValidationError, model: type[BaseModel], prefix: str = "", rename: dict[str, str] | None = None
) -> str:
    """One line for the first error: ``field.path = value: rule`` (+ how many more)."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc = list(first["loc"])
    fields, option = _fields_at(model, loc[:-1]) if loc else (None, None)
    # Discriminated unions put the option's name into loc ("optimizer.adam.lr"); users wrote "optimizer.lr".
    parts = [str(p) for p in loc if not (option and p == option)]
    if rename and parts and parts[0] in rename:
        parts[0] = rename[parts[0]]
    where = clip(prefix + ".".join(parts) if parts else prefix.rstrip(".") or "spec")
    kind = first["type"]
    value = first.get("input")
    if kind == "extra_forbidden":
        owner = f"{option!r} " if option else ""
        valid = ", ".join(fields or [])
        msg = f"{where}: unknown key{did_you_mean(loc[-1], fields or [])}; {owner}accepts: {valid}"
        if option:
            msg = f"{where} = {shown_value(value)}: {option!r} does not take {shown(loc[-1])} (accepts: {valid})"
    elif kind == "missing":
        msg = f"{where}: required key is missing"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = first.get("ctx", {}).get("expected_tags", "")
        valid = [t.strip().strip("'") for t in str(tags).split(",") if t.strip()]
        tag = first.get("ctx", {}).get("tag", value)
        key = first.get("ctx", {}).get("discriminator", "name").strip("'")
        msg = f"{where}.{key} = {shown(tag)}: unknown option{did_you_mean(tag, valid)}; valid: {', '.join(valid)}"
    elif kind == "string_too_long" and model is SweepSpec and loc == ["name"]:
        msg = (f"name = {shown_value(value)}: {len(value)} characters, at most {MAX_NAME_LENGTH}: the sweep's Tune "
               f"folder <name>-YYYYmmdd-HHMMSS must fit a file name ({NAME_MAX} bytes)")
    else:
        rule = clip(first["msg"].removeprefix("Value error, "), 300)
        msg = (rule if rule.startswith(tuple(f"{f}" for f in ("scheduler.", "budget.")))
               else f"{where} = {shown_value(value)}: {rule}")
    more = len(errors) - 1
    return msg + (f" (and {more} more error{'s' if more > 1 else ''})" if more else "")


def shown_value(value: Any) -> str:
    """A value as echoed in an error: bounded, and a long string says how long it was."""
    text = shown(value)
    return f"{text} ({len(value):,} characters)" if isinstance(value, str) and text.endswith(ELLIPSIS) else text


def _fields_at(model: Any, loc: list) -> tuple[list[str] | None, str | None]:
    """Field names of the model reached by ``loc``, and the union option name passed on the way."""
    option = None
    current = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, dict):  # union options by tag
            if part not in current:
                return None, option
            option, current = part, current[part]
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None, option
        current = current.model_fields[part].annotation
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [f for f in current.model_fields if f != "name" or option is None], option
    return None, option


def _unwrap(tp: Any) -> Any:
    """Strip Annotated / Optional; a union of named options becomes {name: option}."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    # Options of a callable discriminator come as Annotated[option, Tag(name)].
    args = [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a for a in args]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and args:
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1:
            return models[0]
        tagged = {}
        for m in models:
            name_field = m.model_fields.get("name") or m.model_fields.get("type")
            if name_field is not None and name_field.default is not None:
                tagged[name_field.default] = m
        return tagged or tp
    return tp
