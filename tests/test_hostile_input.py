"""Input as a hostile or careless user writes it: every mistake one short line and exit 2, in
bounded time and memory, found before Ray or MLflow start; a traceback only with --debug."""

from __future__ import annotations

import os
import socket
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import free_port

from tricksweep import preflight
from tricksweep.cli import main
from tricksweep.errors import ELLIPSIS, ERROR_CHARS, VALUE_CHARS, SpecError, clip, shown
from tricksweep.spec import MAX_NAME_LENGTH, MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, NAME_MAX, load_spec

BASE = """\
name: hostile
metric: val_accuracy
mode: max
budget: {trials: 2, max_epochs: 2}
"""
LONGEST_LINE = len("error: ") + ERROR_CHARS + 1


def rejected(user_folder: Path, text: str | bytes, capsys, *expected: str, command: str = "validate",
             args: tuple[str, ...] = ()) -> str:
    """The spec's one error line (exit 2, short, nothing recorded), checked for ``expected``."""
    path = user_folder / "sweeps" / "hostile.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main([command, str(path), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, f"not one line: {err[:300]!r}"
    assert len(err) <= LONGEST_LINE, f"{len(err)} characters: {err[:300]!r}"
    assert "Traceback" not in err
    for piece in expected:
        assert piece in err, f"{piece!r} not in {err!r}"
    assert not (user_folder / "mlflow.db").exists() and not (user_folder / "runs").exists(), "something was recorded"
    return err


# -- 1. errors echo bounded values ------------------------------------------------------------


def test_shown_cuts_long_values_with_an_ellipsis():
    assert shown("adam") == "'adam'"
    long = shown("x" * 10_000)
    assert len(long) == VALUE_CHARS and long.endswith(ELLIPSIS) and long.startswith("'xxx")
    assert shown(list(range(100_000))).endswith(ELLIPSIS)
    assert clip("short") == "short"
    assert str(SpecError("a\nb" + "c" * 5000)) == clip("a b" + "c" * 5000, ERROR_CHARS)
    # str() of an int past Python's 4300-digit limit raises; the error must not
    assert shown(10**5000).startswith("<int of ")


HUGE = "x" * 200_000
BOUNDED = {
    "a long unknown metric": (BASE.replace("val_accuracy", HUGE), ["metric = 'xxx", ELLIPSIS, "unknown metric"]),
    "a long wrong-typed name": (BASE.replace("name: hostile", f"name: [{HUGE}]"), ["name = [", ELLIPSIS]),
    "a long trainable": (BASE + f"trainable: {HUGE}\n", ["trainable = 'xxx", ELLIPSIS]),
    # a YAML key past 1024 characters is explicit: `? key` then `: value`
    "a long parameter name": (BASE + f"space:\n  ? {HUGE}\n  : {{uniform: [1, 0]}}\n", [ELLIPSIS, "low <= high"]),
    "a long choice": (BASE + "space: {dropout: {uniform: [" + ", ".join(["0.1"] * 20_000) + "]}}\n",
                      ["space.dropout.uniform = [0.1, 0.1", ELLIPSIS, "must be a list [low, high]"]),
    "a long option value": (BASE + f"space: {{optimizer: {{name: {HUGE}}}}}\n", ["space.optimizer.name", ELLIPSIS]),
    "a long unknown key": (BASE + f"? {HUGE}\n: 1\n", ["unknown key"]),
    "a long key given twice": (BASE + f"space:\n  ? {HUGE}\n  : 1\n  ? {HUGE}\n  : 2\n", ["defined twice", ELLIPSIS]),
}


@pytest.mark.parametrize("case", BOUNDED)
def test_values_in_errors_are_cut_to_a_readable_length(user_folder: Path, capsys, case: str):
    text, expected = BOUNDED[case]
    rejected(user_folder, text, capsys, *expected)


def test_a_long_name_says_how_long_it_was(user_folder: Path, capsys):
    err = rejected(user_folder, BASE.replace("name: hostile", "name: " + "n" * 5000), capsys, "name = 'nnn")
    assert "(5,000 characters)" in err and f"at most {MAX_NAME_LENGTH}" in err


# -- 2. parsing is bounded --------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    """Each level a list of 9 aliases of the one before: 9**levels strings from ~330 bytes."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["top level", "under space"])
def test_alias_expansion_is_rejected_in_bounded_time_and_memory(user_folder: Path, capsys, where: str):
    bomb = billion_laughs()
    assert len(bomb) < 600
    text = bomb if where == "top level" else BASE + "space:\n" + "".join(f"  {line}\n" for line in bomb.splitlines())
    tracemalloc.start()
    started = time.perf_counter()
    try:
        rejected(user_folder, text, capsys, f"more than {MAX_YAML_NODES:,} values", "aliases")
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < 0.5, f"{elapsed:.2f} s"
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_aliases_within_the_limit_still_work(user_folder: Path):
    text = BASE.replace("{trials: 2, max_epochs: 2}", "{trials: &n 3, max_epochs: *n}")
    (user_folder / "sweeps" / "anchors.yaml").write_text(text + "space: {optimizer: &adam {name: adam, lr: 0.01}}\n"
                                                     "claims: [{claim: c, param: seed, treatment: [*n], control: [1],"
                                                     " expect: higher}]\n")
    spec = load_spec(user_folder / "sweeps" / "anchors.yaml").spec
    assert (spec.budget.trials, spec.budget.max_epochs, spec.claims[0].treatment) == (3, 3, [3])


def test_an_alias_inside_its_own_anchor_is_rejected(user_folder: Path, capsys):
    rejected(user_folder, BASE + "space: {loop: &a [1, *a]}\n", capsys, "an alias refers to a value containing it")


@pytest.mark.parametrize("levels", [MAX_YAML_DEPTH + 5, 20_000])
def test_deep_nesting_is_rejected(user_folder: Path, capsys, levels: int):
    rejected(user_folder, BASE + "space: {deep: " + "[" * levels + "]" * levels + "}\n", capsys,
             f"deeper than {MAX_YAML_DEPTH} levels")


def test_a_file_past_the_size_limit_is_rejected_unread(user_folder: Path, capsys):
    padding = ("# " + "-" * 98 + "\n") * (MAX_YAML_BYTES // 100 + 1)
    rejected(user_folder, BASE + padding, capsys, f"larger than {MAX_YAML_BYTES:,} bytes", "the limit")


def test_bytes_that_are_not_text_are_rejected(user_folder: Path, capsys):
    rejected(user_folder, BASE.encode() + b"description: \xff\xfe\n", capsys, "not UTF-8 text")


def test_an_integer_too_long_to_convert_is_rejected(user_folder: Path, capsys):
    rejected(user_folder, BASE + "seed: " + "9" * 5000 + "\n", capsys, "invalid YAML")


# -- 3. numbers mean what they say ------------------------------------------------------------

NUMBERS = {
    "trials: true": (BASE.replace("trials: 2", "trials: true"), ["budget.trials = True", "valid integer"]),
    "max_epochs: 2.5": (BASE.replace("max_epochs: 2", "max_epochs: 2.5"), ["budget.max_epochs = 2.5"]),
    "time_limit_s: .nan": (BASE.replace("max_epochs: 2}", "max_epochs: 2, time_limit_s: .nan}"),
                           ["budget.time_limit_s = nan", "finite"]),
    "cpu: .inf": (BASE + "resources: {cpu: .inf}\n", ["resources.cpu = inf", "finite"]),
    "custom resource .inf": (BASE + "resources: {custom: {spot: .inf}}\n", ["resources.custom.spot = inf"]),
    "reduction_factor: true": (BASE + "scheduler: {type: asha, reduction_factor: true}\n",
                               ["scheduler.reduction_factor = True", "valid number"]),
    "seed: false": (BASE + "seed: false\n", ["seed = False", "valid integer"]),
    "lr: .inf": (BASE + "space: {optimizer: {name: adam, lr: .inf}}\n",
                 ["space.optimizer.lr = inf", "must be a finite number"]),
    "lr: .nan in a choice": (BASE + "space: {optimizer: {name: adam, lr: {choice: [0.1, .nan]}}}\n",
                             ["space.optimizer.lr.choice[1] = nan", "finite"]),
    "range bound .inf": (BASE + "space: {dropout: {uniform: [0, .inf]}}\n",
                         ["space.dropout.uniform high = inf", "finite"]),
    "range bound -.inf": (BASE + "space: {optimizer: {name: adam, lr: {loguniform: [-.inf, 0.1]}}}\n",
                          ["space.optimizer.lr.loguniform low = -inf"]),
    "range bound true": (BASE + "space: {dropout: {uniform: [true, 1]}}\n",
                         ["space.dropout.uniform low = True", "not a boolean"]),
    "int range bound true": (BASE + "space: {model: {name: mlp, width: {int: [true, 8]}}}\n",
                             ["space.model.width.int low = True", "an integer"]),
    "lr: true": (BASE + "space: {optimizer: {name: adam, lr: true}}\n",
                 ["space.optimizer.lr = True", "must be a number, not a boolean"]),
    "dropout: false in a choice": (BASE + "space: {dropout: {choice: [0.1, false]}}\n",
                                   ["space.dropout = False", "not a boolean"]),
    "dataset val_fraction: .nan": (BASE + "dataset: {name: digits, val_fraction: .nan}\n",
                                   ["dataset.val_fraction = nan", "finite"]),
    "dataset train_per_class: true": (BASE + "dataset: {name: digits, train_per_class: true}\n",
                                      ["dataset.train_per_class = True", "not a boolean"]),
}


@pytest.mark.parametrize("case", NUMBERS)
def test_numbers_are_finite_and_not_booleans(user_folder: Path, capsys, case: str):
    text, expected = NUMBERS[case]
    rejected(user_folder, text, capsys, *expected)


def test_booleans_stay_valid_where_a_boolean_is_asked(user_folder: Path):
    (user_folder / "sweeps" / "flags.yaml").write_text(BASE + "space: {batch_norm: {choice: [true, false]}}\n")
    assert load_spec(user_folder / "sweeps" / "flags.yaml").space["batch_norm"].options[0].value is True


# -- 4. names fit where they go ---------------------------------------------------------------


def test_the_longest_name_fits_a_run_folder_and_one_more_character_is_rejected(user_folder: Path, capsys):
    longest = "n" * MAX_NAME_LENGTH
    (user_folder / "sweeps" / "long.yaml").write_text(BASE.replace("name: hostile", f"name: {longest}"))
    assert load_spec(user_folder / "sweeps" / "long.yaml").spec.name == longest
    (user_folder / f"{longest}-20261201-120000").mkdir()  # Tune's folder for it: exactly NAME_MAX
    with pytest.raises(OSError):  # and this filesystem holds no longer one
        (user_folder / ("n" * (NAME_MAX + 1))).mkdir()
    err = rejected(user_folder, BASE.replace("name: hostile", f"name: {longest}n"), capsys,
                   f"{MAX_NAME_LENGTH + 1} characters, at most {MAX_NAME_LENGTH}", f"({NAME_MAX} bytes)")
    assert "YYYYmmdd-HHMMSS" in err


def test_an_experiment_name_must_fit_a_report_folder(user_folder: Path, capsys):
    rejected(user_folder, BASE + f"tracking: {{experiment: {'e' * (NAME_MAX + 1)}}}\n", capsys,
             "tracking.experiment", f"at most {NAME_MAX} characters")


# -- 5. what the driver can check, before Ray starts ------------------------------------------


def run_rejected(user_folder: Path, capsys, spec: str, *expected: str, args: tuple[str, ...] = ()) -> str:
    from unittest import mock

    from tricksweep import runner

    # Ray may already run in this process (the session's Ray, started by an earlier test): what
    # matters is that this run never got as far as starting or joining one.
    with mock.patch.object(runner, "ensure_ray", side_effect=AssertionError("the run started Ray")):
        return rejected(user_folder, spec, capsys, *expected, command="run", args=args)


def test_storage_that_is_a_file(user_folder: Path, capsys):
    (user_folder / "taken").write_text("")
    run_rejected(user_folder, capsys, BASE + "storage: taken\n", "storage = ", "taken'", "a file, not a folder")
    # The value echoed is the absolute path, cut at 80 characters: under xdist (popen-gw1/) the tmp path
    # is long enough to cut "taken/sub" off, so the check is on the part that names the file in the way.
    run_rejected(user_folder, capsys, BASE, "storage = ", "/taken' is a file, not a folder",
                 args=("--storage", "taken/sub"))


def test_storage_that_cannot_be_written(user_folder: Path, capsys):
    run_rejected(user_folder, capsys, BASE + "storage: /sys/tricksweep-runs\n", "storage = '/sys/tricksweep-runs'",
                 "'/sys' is not writable")


def test_storage_on_a_filesystem_pyarrow_does_not_know(user_folder: Path, capsys):
    run_rejected(user_folder, capsys, BASE + "storage: ftp://example.com/runs\n",
                 "storage = 'ftp://example.com/runs'", "pyarrow cannot open 'ftp://'")


def test_tracking_uri_with_a_scheme_mlflow_cannot_open(user_folder: Path, capsys):
    run_rejected(user_folder, capsys, BASE + "tracking: {uri: 'ftp://example.com/mlflow'}\n",
                 "tracking URI 'ftp://example.com/mlflow'", "no tracking store for 'ftp://'", "sqlite://")


def test_tracking_server_that_refuses(user_folder: Path, capsys):
    port = free_port()
    run_rejected(user_folder, capsys, BASE, f"tracking URI 'http://127.0.0.1:{port}'", "no server answers",
                 args=("--tracking-uri", f"http://127.0.0.1:{port}"))


def test_tracking_server_that_never_answers_is_given_up_in_seconds(user_folder: Path, capsys):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        run_rejected(user_folder, capsys, BASE, f"http://127.0.0.1:{port}", "within 3 s",
                     args=("--tracking-uri", f"http://127.0.0.1:{port}"))
        assert time.monotonic() - started < preflight.SERVER_TIMEOUT_S + 3


def test_tracking_server_that_answers_passes(tmp_path: Path):
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        preflight.check_tracking(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()


def test_dataset_files_missing_with_download_false(user_folder: Path, capsys):
    (user_folder / "empty").mkdir()
    err = run_rejected(user_folder, capsys, BASE + "dataset: {name: mnist, root: empty, download: false}\n",
                       "dataset: mnist: files missing under", "train-images-idx3-ubyte", "(download: false)")
    assert str(user_folder / "empty") in err


def test_a_dataset_root_the_driver_cannot_see_is_left_to_the_workers(user_folder: Path):
    spec = BASE + "dataset: {name: mnist, root: /nowhere/on/this/driver, download: false}\n"
    (user_folder / "sweeps" / "cluster.yaml").write_text(spec)
    preflight.check_dataset(load_spec(user_folder / "sweeps" / "cluster.yaml"))


def test_a_weights_file_that_does_not_exist(user_folder: Path, capsys):
    spec = BASE + "space: {init: {name: pretrained, source: weights/missing.pt}}\n"
    (user_folder / "weights").mkdir()
    run_rejected(user_folder, capsys, spec, "space.init.source = 'weights/missing.pt'", "no such weights file")
    (user_folder / "weights" / "folder.pt").mkdir()
    run_rejected(user_folder, capsys, spec.replace("missing.pt", "folder.pt"), "a folder; name the weights file")


# -- 9. no traceback for a user's mistake, unless asked ---------------------------------------


def test_debug_shows_the_traceback_behind_the_line(user_folder: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    path = user_folder / "sweeps" / "hostile.yaml"
    path.write_text(BASE.replace("trials: 2", "trials: true"))
    for argv in (["--debug", "validate", str(path)], ["validate", str(path), "--debug"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err
        assert err.rstrip().endswith("error: budget.trials = True: Input should be a valid integer")
    monkeypatch.setenv("TRICKSWEEP_DEBUG", "1")
    assert main(["validate", str(path)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_debug_raises_it(
    user_folder: Path, capsys, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PATH", str(user_folder))  # no `mlflow` executable for `tricksweep ui` to start
    assert main(["ui", "--tracking-uri", str(user_folder / "store")]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("error: FileNotFoundError: ") and "--debug" in err and "TRICKSWEEP_DEBUG=1" in err
    with pytest.raises(FileNotFoundError):
        main(["ui", "--tracking-uri", str(user_folder / "store"), "--debug"])
    assert not os.environ.get("TRICKSWEEP_DEBUG")


@pytest.mark.parametrize("command", ["report", "resume"])
def test_report_and_resume_check_the_tracking_uri_first(user_folder: Path, capsys, command: str):
    assert main([command, "quickstart", "--tracking-uri", "ftp://example.com/mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tracking store for 'ftp://'" in err, err
