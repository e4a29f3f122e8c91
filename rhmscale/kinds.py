"""The pydantic base of every model a user writes (the run config, sweep and study specs):
a number is not a boolean and a boolean is not a number. Pydantic's lax mode would take
`data.P: true` as 1 and `model.time_cond=1` as true; either is a mistake to name.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator


class Typed(BaseModel):
    """A model whose numbers are not booleans and whose booleans are not numbers."""

    @field_validator("*", mode="before")
    @classmethod
    def _bool_or_number(cls, value: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation
        kinds = {a for a in typing.get_args(annotation) or (annotation,) if a in (int, float, bool)}
        if kinds == {bool} and value is not None and not isinstance(value, bool):
            raise ValueError(f"{value!r} is not a boolean: give true or false")
        if kinds and bool not in kinds and isinstance(value, bool):
            raise ValueError(f"{str(value).lower()} is a boolean: give a number")
        return value
