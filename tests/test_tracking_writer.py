"""The MLflow writer thread against a real sqlite store: every op lands, in order per trial, in
few calls."""

from __future__ import annotations

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from tricksweep.tracking import PARENT_TAG, TRIAL_TAG
from tricksweep.writer import EndRun, LogMetrics, SetTags, StartRun, Writer


def test_interleaved_trials_land_whole_in_a_few_calls_each(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("writer")
    parent = client.create_run(experiment).info.run_id
    writer = Writer(tracking_uri, experiment, parent, resumed=False, linger_s=0.3)
    epochs = 12
    for trial in ("a", "b"):
        writer.submit(StartRun(trial, f"trial-{trial}", {"lr": 0.1, "opt": trial}, {"kind": "child"}))
    for epoch in range(1, epochs + 1):  # two trials' epochs interleaved, as Tune delivers them
        for trial in ("a", "b"):
            writer.submit(
                LogMetrics(trial, [Metric("val_accuracy", epoch / 100, 0, epoch), Metric("lr", 0.1, 0, epoch)])
            )
    for trial in ("a", "b"):
        writer.submit(SetTags(trial, {"tricksweep.status": "completed"}))
        writer.submit(EndRun(trial, "FINISHED"))
    assert writer.close(timeout=60) == 0

    runs = client.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
    assert sorted(r.data.tags[TRIAL_TAG] for r in runs) == ["a", "b"]
    for run in runs:
        trial = run.data.tags[TRIAL_TAG]
        assert run.data.params == {"lr": "0.1", "opt": trial}
        assert run.data.tags["kind"] == "child" and run.data.tags["tricksweep.status"] == "completed"
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, epochs + 1))
    # One call per epoch per trial would be 2 x (1 + 12 + 1 + 1) = 30; batched: create, one or two
    # log_batch (params, metrics, tags ride together), set_terminated.
    assert writer.calls <= 2 * 4, writer.calls


def test_a_trial_that_never_reports_still_gets_its_params(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("writer")
    parent = client.create_run(experiment).info.run_id
    writer = Writer(tracking_uri, experiment, parent, resumed=False, linger_s=0.0)
    writer.submit(StartRun("a", "trial-a", {f"p{i}": i for i in range(150)}, {}))  # over log_batch's 100 params
    writer.submit(EndRun("a", "FAILED"))
    assert writer.close(timeout=60) == 0
    [run] = client.search_runs([experiment], filter_string=f"tags.`{TRIAL_TAG}` = 'a'")
    assert len(run.data.params) == 150 and run.info.status == "FAILED"


def test_backfill_writes_only_the_epochs_mlflow_missed(tracking_uri):
    from tricksweep.tracking import ParentRun

    sweep = ParentRun(tracking_uri, "backfill")
    parent = sweep.start("sweep", {}, {})
    client = sweep.client
    child = client.create_run(sweep.experiment_id, tags={PARENT_TAG: parent, TRIAL_TAG: "t1"}).info.run_id
    client.log_batch(child, metrics=[Metric("val_accuracy", v, 0, step) for step, v in ((2, 0.5), (3, 0.6))])
    # Tune's rows: epoch 1 and 4 never reached MLflow; epoch 3 was repeated after a restore.
    rows = [
        {"epoch": e, "val_accuracy": v, "val_loss": 1 - v, "timestamp": 1_700_000_000, "trial_id": "t1"}
        for e, v in ((1, 0.4), (2, 0.5), (3, 0.6), (3, 0.65), (4, 0.7))
    ]
    assert sweep.backfill({"t1": rows, "other": rows}, probe="val_accuracy") == 4  # 2 epochs x 2 metrics
    history = sorted((m.step, m.value) for m in client.get_metric_history(child, "val_accuracy"))
    assert history == [(1, 0.4), (2, 0.5), (3, 0.6), (4, 0.7)]
    assert sorted(m.step for m in client.get_metric_history(child, "val_loss")) == [1, 4]
    assert sweep.backfill({"t1": rows}, probe="val_accuracy") == 0  # nothing left to add
