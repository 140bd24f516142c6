"""A test-only trainable: the classifier, except that a trial with dropout >= 0.5 raises in epoch 2
on its first attempt only (a marker file in the trial's working folder remembers the attempt)."""

from pathlib import Path

from trainables.classifier import METRICS, Config  # noqa: F401 - the trainable contract
from trainables.classifier import train as classifier_train

ERROR = "injected failure on the first attempt"


def train(cfg, report):
    marker = Path("attempted")  # Tune runs each trial in a folder of its own, the same one on resume

    def failing_report(*, epoch, metrics, checkpoint=None, end=None):
        if cfg.dropout >= 0.5 and epoch == 2 and not marker.exists():
            marker.touch()
            raise RuntimeError(ERROR)
        report(epoch=epoch, metrics=metrics, checkpoint=checkpoint, end=end)

    failing_report.restore = report.restore
    classifier_train(cfg, failing_report)
