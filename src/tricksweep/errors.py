"""User-facing errors: one line naming the field, the value and the rule.

Values echoed in a message go through ``shown`` (cut to ``VALUE_CHARS`` with an ellipsis), and a
SpecError is one line of at most ``ERROR_CHARS`` whatever it was built from: a hostile spec (a
megabyte string, a list expanded from YAML aliases) must not become a megabyte error.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

VALUE_CHARS = 80  # a value echoed in an error: enough to recognise it, short enough to read
ERROR_CHARS = 600  # a whole error line (lists of valid names included)
ELLIPSIS = "…"
# How a client sends the token of a cluster with Ray's token authentication on (cluster.yaml's).
RAY_TOKEN_FIX = "export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<the cluster's token file>, as cluster.yaml says"


def clip(text: str, limit: int = VALUE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def shown(value: Any, limit: int = VALUE_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = f"<{type(value).__name__} of {value.bit_length()} bits>" if isinstance(value, int) else "<value>"
    return clip(text, limit)


def one_line(text: str, limit: int = ERROR_CHARS) -> str:
    """``text`` on one line (line breaks become spaces), cut to ``limit`` characters."""
    return clip(" ".join(str(text).split("\n")), limit)


class SpecError(ValueError):
    """Bad user input. The CLI prints ``str(err)`` on one line and exits with code 2."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'adam'?)`` when a valid name is close to ``word``, else ``''``."""
    close = difflib.get_close_matches(clip(str(word)), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(field: str, value: str, kind: str, valid: Iterable[str]) -> SpecError:
    valid = sorted(valid)
    return SpecError(
        f"{field} = {shown(value)}: unknown {kind}{did_you_mean(value, valid)}; valid {kind}s: {', '.join(valid)}"
    )
