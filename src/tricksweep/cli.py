"""The ``tricksweep`` command: the top of the engine (nothing imports it).

    tricksweep init myproj                              # a project of your own: model, data, sweep
    tricksweep validate sweeps/quickstart.yaml
    tricksweep run sweeps/quickstart.yaml [--smoke]
    tricksweep resume quickstart
    tricksweep report quickstart [--out DIR]
    tricksweep register quickstart [--model NAME] [--alias best]
    tricksweep rerun quickstart trial-00003             # train one trial again; compare with its record
    tricksweep extend quickstart sweeps/quickstart_wider.yaml --trials 16   # continue a finished sweep
    tricksweep submit sweeps/cifar10_tricks.yaml --address http://127.0.0.1:8265
    tricksweep status|logs|stop JOB --address http://127.0.0.1:8265
    tricksweep ls
    tricksweep ui
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from tricksweep.errors import SpecError, one_line

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1  # the sweep failed: every trial failed, or its first trials failed alike and it stopped
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: `tricksweep resume NAME` finishes the sweep


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("TRICKSWEEP_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except SpecError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        # Not a mistake the engine recognised: still one line, the traceback for those who ask.
        if debug:
            raise
        lines = [line for line in str(err).splitlines() if line.strip()]
        reason = f"{type(err).__name__}: {lines[0].strip()}" if lines else type(err).__name__
        print(f"error: {one_line(reason)} (the traceback: tricksweep --debug ... or TRICKSWEEP_DEBUG=1)",
              file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tricksweep", description="Hyperparameter sweeps over deep-learning tricks.")
    debug_help = "show the traceback behind an error (also TRICKSWEEP_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a small project of your own: a model, a data factory and a sweep")
    p.add_argument("folder", type=Path, help="a new or empty folder")
    p.add_argument("--package", help="the Python package of your code (default: from the folder's name)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("validate", help="check a sweep spec; print its space, trial count and epoch budget")
    p.add_argument("spec", type=Path)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run a sweep on local Ray (or --address) and record it in MLflow")
    p.add_argument("spec", type=Path)
    p.add_argument("--smoke", action="store_true", help="2 trials x 2 epochs, to check the spec runs")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides the spec and MLFLOW_TRACKING_URI)")
    p.add_argument("--address", help="Ray address to attach to ('auto' on a cluster head); default: local Ray")
    p.add_argument("--storage", help="Tune storage path (overrides the spec)")
    p.add_argument("--top", type=int, default=10, help="leaderboard rows to print")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end (tricksweep report NAME later)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="finish the latest run of a sweep after its driver or cluster died")
    p.add_argument("name", help="the sweep's name (its MLflow experiment)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI where the sweep was recorded")
    p.add_argument("--address", help="Ray address to attach to; default: local Ray")
    p.add_argument("--top", type=int, default=10, help="leaderboard rows to print")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("report",
                       help="leaderboard, per-trick effects, importance, claims and plots of a finished sweep")
    p.add_argument("name", help="the sweep's name (its MLflow experiment)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI where the sweep was recorded")
    p.add_argument("--out", type=Path, help="folder for the report (default: reports/NAME)")
    p.add_argument("--top", type=int, default=10, help="leaderboard rows")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--lineage", action="store_true",
                   help="over every run the latest one extends too (tricksweep extend), trials named g0/, g1/...")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("register", help="log a finished sweep's best model on its parent run and register it")
    p.add_argument("name", help="the sweep's name (its MLflow experiment); its latest run is registered")
    p.add_argument("--tracking-uri", help="MLflow tracking URI where the sweep was recorded")
    p.add_argument("--model", help="registered model name (default: the spec's registry.model, else the sweep's name)")
    p.add_argument("--alias", help="alias to move when this sweep does better (default: the spec's, else 'best')")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("rerun", help="train one trial of a sweep again (same config and seed) and compare its metrics")
    p.add_argument("name", help="the sweep's name (its MLflow experiment); its latest run is used")
    p.add_argument("trial", help="the trial's name (trial-00003) or id (a1b2c_00003)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI where the sweep was recorded")
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser("extend", help="continue a finished sweep: more trials, a longer budget or a changed space")
    p.add_argument("name", help="the sweep's name (its MLflow experiment); its latest run is continued")
    p.add_argument("spec", type=Path, nargs="?",
                   help="a spec whose space or budget differs (same name, metric, mode, trainable); "
                   "default: the sweep's")
    p.add_argument("--trials", type=int, help="new trials to run (default: the spec's budget.trials)")
    p.add_argument("--max-epochs", type=int,
                   help="epochs a trial may run at most (default: the spec's budget.max_epochs)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI where the sweep was recorded")
    p.add_argument("--address", help="Ray address to attach to; default: local Ray")
    p.add_argument("--storage", help="Tune storage path (default: the sweep's)")
    p.add_argument("--top", type=int, default=10, help="leaderboard rows to print")
    p.add_argument("--no-report", action="store_true", help="skip the lineage's report at the end")
    p.set_defaults(func=cmd_extend)

    p = sub.add_parser("submit", help="run a sweep as a Ray Job on a cluster (its dashboard address)")
    p.add_argument("spec", type=Path)
    p.add_argument("--address", required=True, help="Ray dashboard URL, e.g. http://127.0.0.1:8265")
    p.add_argument("--smoke", action="store_true", help="2 trials x 2 epochs")
    p.add_argument("--tracking-uri",
                   help="MLflow URI as seen from the cluster (default: the spec's, else the head's env)")
    p.add_argument("--storage", help="Tune storage path shared by all nodes (overrides the spec)")
    p.set_defaults(func=cmd_submit)

    for name, helptext in (("status", "a job's state"), ("logs", "a job's output"), ("stop", "stop a job")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job_id")
        p.add_argument("--address", required=True, help="Ray dashboard URL, e.g. http://127.0.0.1:8265")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="stream until the job ends")
        p.set_defaults(func={"status": cmd_status, "logs": cmd_logs, "stop": cmd_stop}[name])

    p = sub.add_parser("ls", help="list trainables, search-space fragments and sweeps")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("ui", help="open the MLflow UI on the sweeps' tracking store (loopback only)")
    p.add_argument("--tracking-uri")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)

    for command in sub.choices.values():  # --debug after the command too; SUPPRESS keeps one given before
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


def cmd_init(args: argparse.Namespace) -> int:
    from tricksweep.scaffold import init_project

    written = init_project(args.folder, args.package)
    sweep = next(p for p in written if p.suffix == ".yaml").relative_to(args.folder)
    print(f"created {args.folder}/:")
    for path in written:
        print(f"  {path.relative_to(args.folder)}")
    print("next (each file says what to replace):")
    print(f"  cd {args.folder}")
    print(f"  tricksweep validate {sweep}")
    print(f"  tricksweep run {sweep} --smoke")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from tricksweep import asha
    from tricksweep import space as dsl
    from tricksweep.spec import load_spec

    loaded = load_spec(args.spec)
    spec = loaded.spec
    print(f"{args.spec}: valid sweep '{spec.name}' (trainable {spec.trainable}, dataset {spec.dataset.get('name')})")
    if loaded.fragments:
        print(f"fragments: {', '.join(loaded.fragments)}")
    print("space:")
    for line in dsl.describe(loaded.space, indent=1):
        print(line)
    trials, epochs = loaded.trials_total, spec.budget.max_epochs
    print(f"trials: {trials} ({spec.searcher} searcher"
          + (f", {loaded.grid_points} grid points x {spec.budget.trials}" if loaded.grid_points > 1 else "")
          + (f", each configuration x {spec.repeats} seeds" if spec.repeats > 1 else "") + ")")
    if spec.budget.max_total_epochs:
        print(f"epoch budget limit: no new trial once {spec.budget.max_total_epochs} epochs are spent")
    budget = f"epoch budget: at most {trials * epochs} epochs ({trials} trials x {epochs})"
    if spec.scheduler.type == "asha":
        grace, factor = spec.scheduler.grace_epochs, spec.scheduler.reduction_factor
        expected = asha.expected_epochs(trials, epochs, grace, factor)
        budget += f"; with ASHA about {expected:.0f} (rungs at epochs {asha.rungs(epochs, grace, factor)})"
    print(budget)
    print(f"objective: {spec.mode} {spec.metric}; resources per trial: {spec.resources.cpu:g} CPU, "
          f"{spec.resources.gpu:g} GPU")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tricksweep.runner import check_address, code_runtime_env, run_sweep
    from tricksweep.spec import load_spec

    loaded = load_spec(args.spec)  # all validation before Ray or MLflow start
    code_runtime_env(loaded, args.address)  # a code folder too big to ship fails before the cluster is reached
    check_address(args.address)
    console = _console()
    try:
        outcome = run_sweep(
            loaded, smoke_test=args.smoke, tracking_uri=args.tracking_uri, address=args.address, storage=args.storage,
            echo=lambda line: console.print(line, markup=False),
        )
    except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune ran: no summary, still the way on
        from tricksweep.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri(args.tracking_uri, loaded.spec.tracking.uri)
        print(_interrupted_line(loaded.spec.tracking.experiment or loaded.spec.name, uri), file=sys.stderr)
        return EXIT_INTERRUPTED
    return _conclude(console, outcome, args.top, report=not args.no_report)


def _conclude(console, outcome, top: int, *, report: bool) -> int:
    """The summary, the report of a completed sweep, and a last line that says what to do next
    for one that did not complete; the exit code."""
    _summary(console, outcome, top)
    if outcome.interrupted:
        console.print(_interrupted_line(outcome.experiment, outcome.tracking_uri), markup=False)
        return EXIT_INTERRUPTED
    if outcome.failed:
        print(f"error: sweep {outcome.name} failed: {outcome.error or 'every trial failed'}", file=sys.stderr)
        return EXIT_FAILED
    if report:
        _auto_report(console, outcome, top)
    return 0


def _interrupted_line(experiment: str, uri: str) -> str:
    """The last line of an interrupted sweep: the command that finishes it."""
    from tricksweep.tracking import resolve_tracking_uri

    command = f"tricksweep resume {experiment}"
    if uri != resolve_tracking_uri(None, None):  # where resume looks when not told
        command += f" --tracking-uri {uri}"
    return f"interrupted; to finish the sweep: {command}"


def _auto_report(console, outcome, top: int) -> None:
    """The report at the end of a run: never fails the run (the sweep is already recorded)."""
    from tricksweep.report import build_report, print_report
    from tricksweep.tracking import open_client

    console.print()
    try:
        experiment = open_client(outcome.tracking_uri).get_experiment(outcome.experiment_id).name
        report = build_report(outcome.tracking_uri, experiment, Path("reports") / experiment, top=top)
    except Exception as err:  # noqa: BLE001 - report problems must not turn a finished sweep into a failure
        console.print(f"report skipped: {type(err).__name__}: {err} (retry: tricksweep report {outcome.name})",
                      markup=False)
        return
    print_report(report, console, top)


def cmd_report(args: argparse.Namespace) -> int:
    from tricksweep.preflight import check_tracking
    from tricksweep.report import build_report, print_report
    from tricksweep.tracking import resolve_tracking_uri

    console = _console()
    uri = resolve_tracking_uri(args.tracking_uri, None)
    check_tracking(uri)
    report = build_report(uri, args.name, args.out or Path("reports") / args.name, draw=not args.no_plots, top=args.top,
                          lineage=args.lineage)
    print_report(report, console, args.top)
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    from tricksweep import leaderboard
    from tricksweep.extend import best_lines, extend_sweep
    from tricksweep.preflight import check_tracking
    from tricksweep.records import load_sweep
    from tricksweep.report import build_report, print_report
    from tricksweep.runner import check_address
    from tricksweep.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, None)
    check_tracking(uri)
    check_address(args.address)
    console = _console()
    try:
        outcome = extend_sweep(args.name, args.spec, trials=args.trials, max_epochs=args.max_epochs,
                               tracking_uri=uri, address=args.address, storage=args.storage,
                               echo=lambda line: console.print(line, markup=False, soft_wrap=True))
    except KeyboardInterrupt:
        print(_interrupted_line(args.name, uri), file=sys.stderr)
        return EXIT_INTERRUPTED
    code = _conclude(console, outcome, args.top, report=False)
    if code != 0:
        return code
    console.print()
    sweep = load_sweep(uri, outcome.experiment, lineage=True)
    if args.no_report:
        rows = leaderboard.rank(sweep.trials, sweep.metric, sweep.mode, repeats=sweep.repeats > 1)
        console.print(leaderboard.table(rows, sweep.metric, args.top, heading=f"{sweep.name} (lineage): "))
    else:
        try:
            report = build_report(uri, outcome.experiment, Path("reports") / outcome.experiment, top=args.top,
                                  lineage=True)
            print_report(report, console, args.top)
        except Exception as err:  # noqa: BLE001 - the extend is recorded; a report problem must not fail it
            console.print(f"report skipped: {type(err).__name__}: {err} "
                          f"(retry: tricksweep report {outcome.experiment} --lineage)", markup=False)
    for line in best_lines(sweep):
        console.print(line, markup=False, soft_wrap=True)
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from tricksweep.registry import register_best
    from tricksweep.spec import Registration
    from tricksweep.tracking import ParentRun, resolve_tracking_uri

    if args.model is not None or args.alias is not None:
        _validated_registration(Registration, args.model, args.alias)
    console = _console()
    parent = ParentRun.latest(resolve_tracking_uri(args.tracking_uri, None), args.name)
    registered = register_best(parent.uri, parent.run_id, model=args.model, alias=args.alias,
                               echo=lambda line: console.print(line, markup=False))
    return 0 if registered is not None else 1


def cmd_rerun(args: argparse.Namespace) -> int:
    from tricksweep.preflight import check_tracking
    from tricksweep.rerun import lines, rerun_trial
    from tricksweep.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, None)
    check_tracking(uri)
    console = _console()
    rerun = rerun_trial(uri, args.name, args.trial, echo=lambda line: console.print(line, markup=False, soft_wrap=True))
    for line in lines(rerun):
        console.print(line, markup=False, soft_wrap=True)
    return 0


def _validated_registration(model, name: str | None, alias: str | None) -> None:
    from pydantic import ValidationError

    try:
        model.model_validate({k: v for k, v in (("model", name), ("alias", alias)) if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        field = first["loc"][0]
        raise SpecError(f"--{field} = {first['input']!r}: {first['msg']}") from None


def cmd_resume(args: argparse.Namespace) -> int:
    from tricksweep.preflight import check_tracking
    from tricksweep.runner import check_address, resume_sweep
    from tricksweep.tracking import resolve_tracking_uri

    check_tracking(resolve_tracking_uri(args.tracking_uri, None))
    check_address(args.address)
    console = _console()
    try:
        outcome = resume_sweep(
            args.name, tracking_uri=args.tracking_uri, address=args.address,
            echo=lambda line: console.print(line, markup=False),
        )
    except KeyboardInterrupt:
        from tricksweep.tracking import resolve_tracking_uri

        print(_interrupted_line(args.name, resolve_tracking_uri(args.tracking_uri, None)), file=sys.stderr)
        return EXIT_INTERRUPTED
    return _conclude(console, outcome, args.top, report=True)


def _console():
    import mlflow  # noqa: F401 - configures its loggers on import; quiet them after
    from rich.console import Console

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "creating tables" chatter on first use
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # nor a bar per report download
    # Piped output (CI logs, files) gets a wide table rather than rich's 80-column default.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _summary(console, outcome, top: int) -> None:
    from tricksweep import leaderboard

    console.print()
    console.print(leaderboard.table(outcome.leaderboard, outcome.metric, top))
    counts: dict[str, int] = {}
    for trial in outcome.trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
    summary = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items()))
    minutes, seconds = divmod(int(outcome.wall_s), 60)
    ended = {"interrupted": "interrupted after", "failed": "failed after"}.get(outcome.status, "done in")
    console.print(f"{ended} {minutes}:{seconds:02d}: {summary or 'no trial ran'}", markup=False)
    if outcome.best is not None and outcome.best_value is not None:
        epoch = outcome.leaderboard[0].best_epoch
        console.print(f"best {outcome.metric}: {outcome.best_value:.4f} (trial {outcome.best.trial_id}, epoch {epoch})",
                      markup=False)
    console.print(f"MLflow: experiment '{outcome.name}', parent run {outcome.parent_run_id} at {outcome.tracking_uri}",
                  markup=False)
    console.print(f"  open it:  tricksweep ui   (or: mlflow ui --backend-store-uri {outcome.tracking_uri})  "
                  f"then {outcome.ui_url}", markup=False)
    console.print(f"Tune results: {outcome.experiment_path}", markup=False)


def cmd_submit(args: argparse.Namespace) -> int:
    from tricksweep import jobs

    job_id = jobs.submit(args.spec, args.address, smoke=args.smoke, tracking_uri=args.tracking_uri,
                         storage=args.storage)
    print(job_id)
    print(f"follow it:  tricksweep logs {job_id} --address {args.address} --follow", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tricksweep import jobs

    job = jobs.info(args.job_id, args.address)
    print(f"{args.job_id}: {job.status}" + (f" ({job.message})" if job.message else ""))
    print(f"entrypoint: {job.entrypoint}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from tricksweep import jobs

    if args.follow:
        jobs.follow(args.job_id, args.address, lambda chunk: print(chunk, end="", flush=True))
    else:
        print(jobs.logs(args.job_id, args.address), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from tricksweep import jobs

    stopped = jobs.stop(args.job_id, args.address)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    import yaml

    from trainables import TRAINABLES
    from tricksweep.spec import available_fragments

    print("trainables:")
    for name, module in TRAINABLES.items():
        print(f"  {name:<16} {module}")
    here = Path.cwd() / "sweeps" / "_"
    print("search-space fragments (include: [...]):")
    for name, path in available_fragments(here).items():
        print(f"  {name:<16} {path}")
    print("sweeps:")
    for path in sorted((Path.cwd() / "sweeps").glob("*.yaml")):
        try:
            description = (yaml.safe_load(path.read_text()) or {}).get("description", "")
        except yaml.YAMLError:
            description = "(invalid YAML)"
        print(f"  {str(path.relative_to(Path.cwd())):<28} {description}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from tricksweep.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, None)
    command = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"MLflow UI on http://127.0.0.1:{args.port} for {uri} (sweeps are under 'Model training')")
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
