"""The base of every params section: frozen, strict, closed; shared value types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]
PositiveInt = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    """Frozen, strict, closed: a typo in params.yaml is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ParamsError(ValueError):
    """params.yaml (or an overlay) does not validate; the message names every bad key."""
