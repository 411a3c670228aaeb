"""Shared pydantic configuration: frozen, unknown keys rejected, no silent coercion, every
number finite and every integer within `MAX_INT`."""

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

MAX_INT = 2**24
"""Largest integer any spec field takes (16,777,216). Far above every real size (vocabularies
~2**18, GPU counts ~2**17, contexts ~2**23 tokens, the presets' scale-out domains 2**20) and
small enough that the cost model's int64 and float64 arithmetic stays exact and finite."""


def _too_big(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) > MAX_INT
    if isinstance(value, list | tuple):
        return any(_too_big(v) for v in value)
    return False


class Spec(BaseModel):
    """Base of every spec: immutable, `extra="forbid"`, strict types (ints stay ints), no NaN
    or infinity in any float, no integer beyond `MAX_INT`."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounded_ints(self) -> Any:
        """Refuse huge integers before they reach numpy (where they overflow)."""
        for key in type(self).model_fields:
            value = getattr(self, key)
            if _too_big(value):
                raise ValueError(f"{key}={value!r}: must be at most {MAX_INT:,} in size")
        return self
