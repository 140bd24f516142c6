"""A test-only trainable: the classifier, except that it raises in epoch 2 when dropout >= 0.5."""

from trainables.classifier import METRICS, Config  # noqa: F401 - the trainable contract
from trainables.classifier import train as classifier_train

ERROR = "injected failure in epoch 2"


def train(cfg, report):
    def failing_report(*, epoch, metrics, checkpoint=None, end=None):
        if cfg.dropout >= 0.5 and epoch == 2:
            raise RuntimeError(ERROR)
        report(epoch=epoch, metrics=metrics, checkpoint=checkpoint, end=end)

    failing_report.restore = report.restore
    classifier_train(cfg, failing_report)
