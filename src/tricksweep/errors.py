"""User-facing errors: one line naming the field, the value and the rule."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SpecError(ValueError):
    """Bad user input. The CLI prints ``str(err)`` on one line and exits with code 2."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'adam'?)`` when a valid name is close to ``word``, else ``''``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_name(field: str, value: str, kind: str, valid: Iterable[str]) -> SpecError:
    valid = sorted(valid)
    return SpecError(
        f"{field} = {value!r}: unknown {kind}{did_you_mean(value, valid)}; valid {kind}s: {', '.join(valid)}"
    )
