"""A test-only trainable whose every trial fails the same way, as with a dataset folder that is
empty on the workers: the repeated-error stop ends the sweep after the first few."""

from trainables.classifier import METRICS, Config  # noqa: F401 - the trainable contract

ERROR = "no image files under the dataset root"


def train(cfg, report):
    raise FileNotFoundError(ERROR)
