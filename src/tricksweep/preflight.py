"""What the driver can check about a sweep's surroundings before Ray or MLflow start.

A spec can be valid and still name places the run cannot use: a storage path that is a file,
a tracking server that is down, a dataset folder without its files. Each is found here in
seconds, as one SpecError line (exit 2 from the CLI), instead of minutes later as a traceback
from pyarrow or MLflow, or once per trial on the workers. What only the workers can see (a
dataset root or a weights folder that does not exist on the driver) is left to the trials.

    check(loaded, tracking_uri="sqlite:////abs/mlflow.db", storage_path="/abs/runs")
"""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tricksweep import space as dsl
from tricksweep.errors import SpecError, clip, shown
from tricksweep.spec import LoadedSpec

SERVER_TIMEOUT_S = 3.0  # a tracking server that has not answered by then is taken as down
# pyarrow filesystems whose from_uri needs credentials or the network: Tune checks them itself.
REMOTE_STORAGE = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def check(loaded: LoadedSpec, *, tracking_uri: str, storage_path: str) -> None:
    """SpecError (one line) for the first problem found; storage, tracking, dataset, weights files."""
    check_storage(storage_path)
    check_tracking(tracking_uri)
    check_dataset(loaded)
    check_weights_files(loaded.space)


def check_storage(path: str) -> None:
    """Tune's storage: a writable local folder (or one that can be made), or a URI on a filesystem
    pyarrow knows (Ray Tune opens it with ``pyarrow.fs.FileSystem.from_uri``)."""
    scheme = path.split("://", 1)[0].lower() if "://" in path else ""
    if scheme == "file":
        path = path[len("file://"):]
    elif scheme in REMOTE_STORAGE:
        return
    elif scheme:
        import pyarrow.fs

        try:
            pyarrow.fs.FileSystem.from_uri(path)
        except Exception as err:  # noqa: BLE001 - pyarrow's ArrowInvalid, or a filesystem that cannot start
            raise SpecError(f"storage = {shown(path)}: pyarrow cannot open '{clip(scheme, 20)}://' "
                            f"({clip(str(err), 120)}); use a local folder or s3://, gs://, hdfs://, abfs://") from None
        return
    _writable_folder(Path(path), f"storage = {shown(path)}")


def _writable_folder(folder: Path, what: str) -> None:
    """``folder`` is a folder this process can write in, or can be made under one that is."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        rule = "a file, not a folder" if existing == folder else f"{shown(str(existing))} is a file, not a folder"
        raise SpecError(f"{what}: {rule}")
    try:  # os.access says yes to root on a read-only mount: try it
        tempfile.TemporaryDirectory(dir=existing, prefix=".tricksweep-probe-").cleanup()
    except OSError as err:
        raise SpecError(f"{what}: {shown(str(existing))} is not writable ({err.strerror or err})") from None


def check_tracking(uri: str) -> None:
    """A tracking URI whose scheme MLflow has a store for; a server (http/https) that answers."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    known = _tracking_schemes()
    if known is not None and scheme not in known:
        schemes = ", ".join(f"{s}://" for s in sorted(known) if s)
        raise SpecError(f"tracking URI {shown(uri)}: MLflow has no tracking store for '{clip(scheme, 20)}://'; "
                        f"it knows {schemes} and plain folders")
    if scheme in ("http", "https"):
        _server_answers(uri)
    elif scheme == "sqlite" and uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        if database.is_dir():
            raise SpecError(f"tracking URI {shown(uri)}: {shown(str(database))} is a folder, not a database file")
        _writable_folder(database.parent, f"tracking URI {shown(uri)}")


def _tracking_schemes() -> set[str] | None:
    """The URI schemes MLflow's tracking store registry can open (plugins included); None where
    this MLflow keeps them elsewhere (then nothing is rejected here)."""
    from mlflow.tracking._tracking_service import utils

    registry = getattr(getattr(utils, "_tracking_store_registry", None), "_registry", None)
    return set(registry) if isinstance(registry, dict) else None


def _server_answers(uri: str) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=SERVER_TIMEOUT_S):  # noqa: S310 - http(s) only, checked above
            return
    except urllib.error.HTTPError:
        return  # it answered; whether it is MLflow shows on the first request
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise SpecError(f"tracking URI {shown(uri)}: no server answers there within {SERVER_TIMEOUT_S:g} s "
                        f"({clip(str(reason), 120)}); start it, or check the address") from None


def check_dataset(loaded: LoadedSpec) -> None:
    """Dataset files missing where ``download: false`` and the driver sees the data folder: every
    trial would fail on them, so the sweep does not start."""
    from trainables.data import FilesUnavailable

    config = loaded.trainable.config
    if config is None or "data" not in config.model_fields:
        return
    data = config.model_validate({"data": loaded.spec.dataset}).data
    if getattr(data, "download", True) is not False or not hasattr(data, "missing"):
        return
    if not data.data_root.is_dir() or not data.missing():
        return  # files there, or a root only the workers see
    try:
        data.ensure_files()  # unpacks copied .gz files where it can; else says what is missing and where
    except FilesUnavailable as err:
        raise SpecError(f"dataset: {err}") from None


def check_weights_files(space: dsl.Node) -> None:
    """Every weights file a ``source`` names as a local path exists, where the driver sees its folder."""
    from trainables.data import absolute
    from trainables.init import TORCHVISION_WEIGHTS

    for path, value in _sources(space, "space"):
        if not isinstance(value, str) or not value.strip() or value.startswith(("runs:/", "models:/")):
            continue  # {sweep: ...} and MLflow artifacts: resolve_sources finds them or says why not
        if TORCHVISION_WEIGHTS.match(value):
            continue
        file = Path(absolute(value))
        if file.is_dir():
            raise SpecError(f"{clip(path)} = {shown(value)}: a folder; name the weights file in it")
        if not file.exists() and file.parent.is_dir():
            raise SpecError(f"{clip(path)} = {shown(value)}: no such weights file")


def _sources(node: Any, path: str, under_source: bool = False) -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        if under_source:
            return []  # {sweep: ...} / {mlflow: ...}: no file here; resolve_sources finds them or says why not
        return [found for key, child in node.items()
                for found in _sources(child, f"{path}.{key}", under_source or key == "source")]
    if isinstance(node, dsl.Choice):
        return [found for i, option in enumerate(node.options) for found in _sources(option, f"{path}[{i}]",
                                                                                     under_source)]
    if isinstance(node, dsl.Const) and under_source:
        return [(path, node.value)]
    return []
