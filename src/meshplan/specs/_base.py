"""Shared pydantic configuration: frozen, unknown keys rejected, no silent coercion."""

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Base of every spec: immutable, `extra="forbid"`, strict types (ints stay ints)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
