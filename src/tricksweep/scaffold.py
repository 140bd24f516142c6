"""``tricksweep init DIR``: a small project of your own (a model factory, a data factory, a sweep)
that validates and runs in smoke mode as written, each file saying what to replace.

    created = init_project(Path("myproj"))   # myproj/myproj/{nets,data}.py, myproj/sweeps/myproj.yaml
"""

from __future__ import annotations

import keyword
import re
import string
from pathlib import Path

from tricksweep.errors import SpecError, shown

TEMPLATE = Path(__file__).parent / "templates" / "project"


def package_name(folder: Path) -> str:
    """A Python package name made from the folder's name: ``my-proj`` -> ``my_proj``."""
    name = re.sub(r"\W+", "_", folder.resolve().name).strip("_").lower()
    if not name or name[0].isdigit() or keyword.iskeyword(name):
        name = f"sweep_{name}".rstrip("_")
    return name


def init_project(folder: Path, package: str | None = None) -> list[Path]:
    """Write the project into ``folder`` (new or empty); returns the files written. Raises
    SpecError (one line) for a folder that holds files or a package name Python cannot import."""
    package = package or package_name(folder)
    if not package.isidentifier() or keyword.iskeyword(package):
        raise SpecError(f"--package {shown(package)}: must be a Python identifier (letters, digits, _)")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a file" if not folder.is_dir() else "not empty"
        raise SpecError(f"init {folder}: {what}; give a new or empty folder")
    written = []
    for source in sorted(p for p in TEMPLATE.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        relative = source.relative_to(TEMPLATE).as_posix()
        relative = relative.replace("package/", f"{package}/").replace("sweeps/sweep.yaml", f"sweeps/{package}.yaml")
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(string.Template(source.read_text()).substitute(package=package))
        written.append(target)
    return written
