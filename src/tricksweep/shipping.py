"""The user's code on every node of a cluster: the folders their import strings were found in,
shipped through Ray's runtime environment (``tricksweep run --address``, ``tricksweep submit``).

    folders = code_folders(loaded.code_paths, loaded.spec.code.dir)     # e.g. [Path("/home/me/proj")]
    excludes = excludes_for(loaded.spec.code.exclude)
    for folder in folders:
        check_size(folder, excludes, driver_upload_limit(), "--address")  # one-line SpecError if too big
    ray.init(address, runtime_env=runtime_env(folders, excludes))

Each folder travels as a ``py_modules`` entry, not as the ``working_dir``: a job's working_dir is
already this checkout (``submit``), and py_modules may be several folders. Ray unpacks a shipped
folder F as ``.../py_modules_files/_ray_pkg_<hash>/F/`` and puts ``_ray_pkg_<hash>`` on the
workers' ``PYTHONPATH`` (F importable as a package, its modules not as top-level ones), so the
runtime env also names F in ``TRICKSWEEP_SHIPPED_CODE`` and ``shipped_code_dirs`` puts each copy
itself first on ``sys.path``: a trial imports ``train`` from its node's copy of F, as the driver
imported it from F. Absolute paths on sys.path survive Tune's chdir into the trial folder.

What is left out mirrors Ray's packaging (``ray/_private/runtime_env/packaging.py``): the
``excludes`` patterns relative to the folder, and every ``.gitignore`` and ``.rayignore`` met
on the way down, each relative to its own folder. The size limit is Ray's: a job's packages go
through the dashboard's HTTP upload (``DASHBOARD_CLIENT_MAX_SIZE``, 100 MiB, ray#55877), a
driver's through the GCS (``GCS_STORAGE_MAX_SIZE``, 512 MiB unless ``RAY_max_grpc_message_size``);
Ray stores the zip uncompressed, so the files' sizes are what is uploaded.

Light on purpose (the standard library at import time): workers call ``shipped_code_dirs``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tricksweep.errors import SpecError

CODE_ENV = "TRICKSWEEP_SHIPPED_CODE"  # names of the shipped folders, os.pathsep-separated
# Never shipped: version control, environments, caches, local results and stores, weights.
DEFAULT_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ipynb_checkpoints",
    "runs/",
    "mlruns/",
    "mlartifacts/",
    "mlflow.db",
    "*.pt",
    "*.pth",
    "*.ckpt",
]
ENGINE_PACKAGES = {"tricksweep", "trainables"}  # installed on the cluster or shipped by `submit` itself
MIB = 1024 * 1024


def excludes_for(extra: Iterable[str] = ()) -> list[str]:
    """The defaults and the spec's ``code.exclude``, in the order Ray applies them."""
    return list(dict.fromkeys([*DEFAULT_EXCLUDES, *extra]))


def code_folders(code_paths: Iterable[str], named: str | None = None) -> list[Path]:
    """The folders the user's code was imported from: ``named`` (the spec's ``code.dir``) if
    given, else each folder of ``code_paths`` that holds a top-level module or package imported
    so far (the trainable, a model factory ... ``load_spec`` imported). Installed packages and the
    engine's own are not on ``code_paths`` or are left out: nothing to ship for them."""
    if named is not None:
        return [Path(named)]
    roots = [Path(f).resolve() for f in code_paths]
    used: set[Path] = set()
    for name, module in list(sys.modules.items()):
        if "." in name or name in ENGINE_PACKAGES:
            continue
        used.update(folder for folder in _import_roots(module) if folder in roots)
    folders = [root for root in dict.fromkeys(roots) if root in used]
    names = [f.name for f in folders]
    if len(set(names)) < len(names):
        raise SpecError(f"code: your modules come from folders of the same name ({', '.join(map(str, folders))}); "
                        "name the one to ship with `code: {dir: ...}` in the spec")
    return folders


def _import_roots(module: Any) -> list[Path]:
    """The sys.path folders ``module`` (a top-level one) was imported from."""
    file = getattr(module, "__file__", None)
    if file and os.path.basename(file).startswith("__init__."):
        return [Path(file).resolve().parent.parent]
    if file:
        return [Path(file).resolve().parent]
    return [Path(p).resolve().parent for p in getattr(module, "__path__", None) or []]  # a namespace package


def package_files(folder: Path, excludes: list[str]) -> dict[str, int]:
    """The files Ray would pack from ``folder``, by path relative to it, with their sizes."""
    from ray._private.thirdparty.pathspec import PathSpec  # the copy Ray matches with: the same rules

    root = folder.resolve()
    use_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    matchers = [(root, PathSpec.from_lines("gitwildmatch", excludes))]
    files: dict[str, int] = {}

    def walk(path: Path) -> None:
        added = 0
        if path.is_dir():
            for ignore in (".gitignore", ".rayignore") if use_gitignore else (".rayignore",):
                if (path / ignore).is_file():
                    patterns = (path / ignore).read_text().splitlines()
                    matchers.append((path, PathSpec.from_lines("gitwildmatch", patterns)))
                    added += 1
        if not any(spec.match_file(str(path.relative_to(base))) for base, spec in matchers):
            if path.is_file():
                files[str(path.relative_to(root))] = path.stat().st_size
            elif path.is_dir():
                for child in path.iterdir():
                    walk(child)
        del matchers[len(matchers) - added:]

    walk(root)
    return files


def package_size(folder: Path, excludes: list[str]) -> tuple[int, dict[str, int]]:
    """(bytes Ray would upload for ``folder``, the files' bytes per top-level entry). The zip is
    stored uncompressed: each file is its bytes plus a local and a central header naming it."""
    files = package_files(folder, excludes)
    prefix = len(folder.name) + 1  # py_modules packs the folder itself: F/...
    total = 22 + sum(size + 76 + 2 * (prefix + len(name.encode())) for name, size in files.items())
    by_entry: dict[str, int] = {}
    for name, size in files.items():
        top, sep, _ = name.partition(os.sep)
        key = top + "/" if sep else top
        by_entry[key] = by_entry.get(key, 0) + size
    return total, by_entry


def check_size(folder: Path, excludes: list[str], limit: int, route: str) -> int:
    """The package's size; a one-line SpecError naming the biggest entries when Ray would refuse it."""
    total, by_entry = package_size(folder, excludes)
    if total < limit:
        return total
    biggest = sorted(by_entry.items(), key=lambda kv: -kv[1])[:3]
    listed = ", ".join(f"{name} {size / MIB:.1f} MiB" for name, size in biggest)
    example = biggest[0][0] if biggest else "data/"
    raise SpecError(
        f"code folder {folder}: {total / MIB:.1f} MiB to ship, but Ray uploads at most {limit / MIB:.0f} MiB "
        f"per package ({route}); biggest: {listed}; leave them out in {folder / '.gitignore'} or with "
        f'`code: {{exclude: ["{example}"]}}` in the spec'
    )


def driver_upload_limit() -> int:
    """What ``ray.init(runtime_env=...)`` may upload per package: the GCS's gRPC message limit."""
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    return GCS_STORAGE_MAX_SIZE


def job_upload_limit() -> int:
    """What a Ray Job may upload per package: the dashboard's HTTP request limit (100 MiB)."""
    from ray._private.ray_constants import DASHBOARD_CLIENT_MAX_SIZE

    return min(DASHBOARD_CLIENT_MAX_SIZE, driver_upload_limit())


def runtime_env(folders: list[Path], excludes: list[str]) -> dict[str, Any]:
    """The runtime env that ships ``folders`` to every worker of the job."""
    return {"py_modules": [str(f) for f in folders], "excludes": excludes, "env_vars": shipped_env(folders)}


def shipped_env(folders: list[Path]) -> dict[str, str]:
    return {CODE_ENV: os.pathsep.join(f.name for f in folders)} if folders else {}


def in_ray_job() -> bool:
    """True in a Ray Job's driver: its runtime env (``submit``'s) carries the code already."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def shipped_code_dirs() -> tuple[str, ...]:
    """This process's copies of the folders a runtime env shipped (``CODE_ENV``): each is the
    folder of that name inside a py_modules package on sys.path. () when nothing was shipped."""
    found = []
    for name in filter(None, os.environ.get(CODE_ENV, "").split(os.pathsep)):
        copies = [os.path.join(p, name) for p in sys.path
                  if os.path.basename(p).startswith("_ray_pkg_") and os.path.isdir(os.path.join(p, name))]
        if not copies:
            raise RuntimeError(f"the code folder {name!r} was shipped ({CODE_ENV}) but no py_modules "
                               f"package on sys.path holds it: {os.pathsep.join(sys.path)}")
        found.append(copies[0])
    return tuple(found)
