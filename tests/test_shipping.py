"""The user's code reaches every node: the folders it was imported from travel through Ray's
runtime env (py_modules) with --address and submit, .gitignore and excludes respected, and a
package over Ray's upload limit fails before anything is sent, in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import TESTS, free_port, write_spec

from tricksweep import shipping
from tricksweep.cli import main
from tricksweep.errors import SpecError
from tricksweep.runner import code_runtime_env
from tricksweep.spec import load_spec

MIB = 1024 * 1024

HELPERS = '''
import torch


def make_data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, (x.sum(1) > 0).long()
'''

TRAIN = '''
import json
import os

import torch

import helpers  # a sibling module: the folder itself must be on the worker's sys.path


def train(config, report):
    import ray

    probe = report.info.data["probe"]
    with open(os.path.join(probe, f"{os.getpid()}-{report.info.seed}.json"), "w") as out:
        json.dump({"node": ray.get_runtime_context().get_node_id(), "train": __file__,
                   "helpers": helpers.__file__, "sys_path": __import__("sys").path}, out)
    x, y = helpers.make_data()
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    for epoch in range(1, report.info.epochs + 1):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        report(epoch=epoch, metrics={"loss": loss.item()})
'''

SPEC = """
name: shipped
trainable: "mytrain:train"
dataset: {{name: none, probe: "{probe}"}}
metric: loss
mode: min
budget: {{trials: 2, max_epochs: 1}}
scheduler: {{type: none}}
space:
  lr: {{choice: [0.1, 0.2]}}
"""


def user_project(folder: Path, probe: Path) -> Path:
    """A user's folder: a trainable, a helper module it imports, the spec under sweeps/. Returns the spec."""
    (folder / "sweeps").mkdir(parents=True)
    (folder / "helpers.py").write_text(HELPERS)
    (folder / "mytrain.py").write_text(TRAIN)
    probe.mkdir(exist_ok=True)
    return write_spec(folder / "sweeps", SPEC.format(probe=probe))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's folder, with the cwd elsewhere, and its modules forgotten after the test."""
    spec = user_project(tmp_path / "usercode", tmp_path / "probe")
    monkeypatch.chdir(tmp_path)
    yield spec
    for name in ("mytrain", "helpers"):
        sys.modules.pop(name, None)


def big_file(path: Path, mib: int) -> Path:
    """A sparse file: its size is what Ray would upload, without writing it."""
    with path.open("wb") as f:
        f.truncate(mib * MIB)
    return path


# -- what is shipped -------------------------------------------------------------------------


def test_the_folder_holding_the_import_string_is_shipped_on_a_cluster_only(project: Path):
    loaded = load_spec(project)
    folder = project.parent.parent
    assert shipping.code_folders(loaded.code_paths) == [folder]  # not the spec folder, not the cwd
    assert code_runtime_env(loaded, None) is None and code_runtime_env(loaded, "local") is None  # today's sys.path
    env = code_runtime_env(loaded, "127.0.0.1:6379")
    assert env["py_modules"] == [str(folder)] and env["env_vars"] == {shipping.CODE_ENV: "usercode"}
    assert {".git", "__pycache__", ".venv", "runs/", "mlruns/", "mlflow.db", "*.pt"} <= set(env["excludes"])


def test_a_registered_trainable_ships_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(
        tmp_path,
        "name: builtin\nmetric: val_accuracy\nmode: max\nbudget: {trials: 1, max_epochs: 1}\n"
        "space: {optimizer: {name: sgd, lr: 0.1}}\n",
    )
    assert code_runtime_env(load_spec(spec), "127.0.0.1:6379") is None


def test_code_dir_names_the_folder_relative_to_the_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    code = tmp_path / "elsewhere" / "lib"
    user_project(code, tmp_path / "probe")
    monkeypatch.chdir(tmp_path)
    try:
        spec = write_spec(tmp_path, SPEC.format(probe=tmp_path) + "code: {dir: elsewhere/lib, exclude: [data/]}\n")
        loaded = load_spec(spec)
        assert loaded.spec.code.dir == str(code) and loaded.code_paths[0] == str(code)
        env = code_runtime_env(loaded, "127.0.0.1:6379")
        assert env["py_modules"] == [str(code)] and env["excludes"][-1] == "data/"
        with pytest.raises(SpecError, match=r"^code.dir = 'nope': no such folder"):
            load_spec(write_spec(tmp_path, SPEC.format(probe=tmp_path) + "code: {dir: nope}\n"))
    finally:
        for name in ("mytrain", "helpers"):
            sys.modules.pop(name, None)


def test_left_out_files_are_those_ray_leaves_out(tmp_path: Path):
    from ray._private.runtime_env.packaging import create_package

    folder = tmp_path / "proj"
    for name in ["a.py", "pkg/b.py", "pkg/data/x.bin", "pkg/keep.txt", "runs/r/c.json", "__pycache__/a.pyc",
                 ".git/HEAD", "w.pt", "sub/mlflow.db", "notes/n.md", "notes/tmp.log"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name * 100)
    (folder / ".gitignore").write_text("notes/*.log\n")
    (folder / "pkg" / ".gitignore").write_text("data/\n")  # relative to pkg/
    excludes = shipping.excludes_for(["keep.txt"])

    ours = shipping.package_files(folder, excludes)
    zipped = tmp_path / "ray.zip"
    create_package(str(folder), zipped, include_gitignore=True, include_parent_dir=True, excludes=excludes)
    with zipfile.ZipFile(zipped) as z:
        theirs = {n.removeprefix("proj/") for n in z.namelist() if not n.endswith("/")}
    assert set(ours) == theirs == {".gitignore", "a.py", "pkg/.gitignore", "pkg/b.py", "notes/n.md"}
    size, _ = shipping.package_size(folder, excludes)
    assert 0 <= size - zipped.stat().st_size < 200  # the estimate is the zip's size, headers included


def test_shipped_copies_are_found_on_sys_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    package = tmp_path / "py_modules_files" / "_ray_pkg_0123abcd"
    (package / "usercode").mkdir(parents=True)
    monkeypatch.setenv(shipping.CODE_ENV, "usercode")
    monkeypatch.setattr(sys, "path", [str(tmp_path), str(package)])
    assert shipping.shipped_code_dirs() == (str(package / "usercode"),)
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    with pytest.raises(RuntimeError, match="'usercode' was shipped"):
        shipping.shipped_code_dirs()
    monkeypatch.delenv(shipping.CODE_ENV)
    assert shipping.shipped_code_dirs() == ()


# -- the size check comes first --------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_folder_over_rays_limit_is_one_line_with_exit_2(project: Path, command: str, capsys):
    folder = project.parent.parent
    (folder / "data").mkdir()
    big_file(folder / "data" / "images.bin", 600)  # over both limits: 512 MiB (--address), 100 MiB (submit)
    address = f"127.0.0.1:{free_port()}" if command == "run" else f"http://127.0.0.1:{free_port()}"
    assert main([command, str(project), "--address", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    limit = "512 MiB" if command == "run" else "100 MiB"
    assert f"code folder {folder}: 600.0 MiB to ship, but Ray uploads at most {limit}" in err, err
    assert "biggest: data/ 600.0 MiB" in err and 'code: {exclude: ["data/"]}' in err and ".gitignore" in err, err


@pytest.mark.parametrize("command", ["run", "submit"])
@pytest.mark.parametrize("left_out", [".gitignore", "code.exclude"])
def test_a_big_file_left_out_passes_the_check(project: Path, command: str, left_out: str, capsys):
    folder = project.parent.parent
    big_file(folder / "images.bin", 600)
    if left_out == ".gitignore":
        (folder / ".gitignore").write_text("images.bin\n")
    else:
        project.write_text(project.read_text() + "code: {exclude: [images.bin]}\n")
    address = f"127.0.0.1:{free_port()}" if command == "run" else f"http://127.0.0.1:{free_port()}"
    assert main([command, str(project), "--address", address]) == 2
    err = capsys.readouterr().err
    assert "no Ray" in err and "answers there" in err, err  # past the size check, on to the address


# -- on a cluster ------------------------------------------------------------------------------


@pytest.mark.scenario
def test_trials_on_other_nodes_import_the_users_code_from_the_shipped_copy(tmp_path: Path, new_store):
    probe = tmp_path / "probe"
    spec = user_project(tmp_path / "usercode", probe)
    driver_cwd = tmp_path / "driver"  # Ray puts the driver's cwd on the workers' sys.path: not the user's folder
    driver_cwd.mkdir()
    done = subprocess.run(
        [sys.executable, str(TESTS / "scenarios" / "user_code_cluster.py"), str(spec), str(tmp_path / "runs"),
         new_store(tmp_path)],
        cwd=driver_cwd,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},  # PYTHONPATH: the engine under test, not the user's code
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["errors"] == 0 and outcome["statuses"] == ["completed", "completed"], outcome

    trials = [json.loads(p.read_text()) for p in probe.glob("*.json")]
    assert len(trials) == 2
    user_folder = str(tmp_path / "usercode")
    for trial in trials:
        assert trial["node"] != outcome["head"]
        for module in ("train", "helpers"):
            shipped = Path(trial[module]).parent
            # .../runtime_resources/py_modules_files/_ray_pkg_<hash>/usercode/<module>.py
            assert shipped.name == "usercode" and shipped.parent.name.startswith("_ray_pkg_"), trial[module]
        assert not any(p.startswith(user_folder) for p in trial["sys_path"]), trial["sys_path"]
