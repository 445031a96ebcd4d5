"""The common base of every API model: camelCase on the wire, snake_case in Python, unknown fields refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Immutable, camelCase-aliased model; the policy returns new objects rather than mutating old ones."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )

    def to_wire(self) -> dict[str, object]:
        """The JSON form the API server stores: camelCase keys, durations as strings, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
