"""A test-only trainable whose trials cannot read their data, as on a cluster node that does not
see a path the driver sees: the first such trial stops the sweep."""

from trainables.classifier import METRICS, Config  # noqa: F401 - the trainable contract
from trainables.data import FilesUnavailable

ERROR = "image_folder: no folder /mnt/only-on-the-driver; expected /mnt/only-on-the-driver/<class name>/<image>.png"


def train(cfg, report):
    raise FilesUnavailable(ERROR)
