"""Helpers shared by the option tables (optimizers, inits, models, datasets)."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator


class Strict(BaseModel):
    """Unknown keys are errors; options are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _name_shorthand(value: Any) -> Any:
    # `optimizer: adam` means `optimizer: {name: adam}` with every parameter at its default.
    return {"name": value} if isinstance(value, str) else value


def one_of(table: dict[str, type[Strict]]) -> Any:
    """A field type accepting any option of ``table``, picked by its ``name`` (or a bare name)."""
    union = Union[tuple(table.values())]  # noqa: UP007 - built at run time from the table
    return Annotated[union, Discriminator("name"), BeforeValidator(_name_shorthand)]
