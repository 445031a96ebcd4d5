"""The engine's exception hierarchy.

Library code raises these; only the edges translate them (the CLI into exit code 2, the HTTP service into
problem responses), so callers can catch one base class and still tell bad input from bugs.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidData(EngineError):
    """The OHLCV input is malformed; `row` is the 0-based position of the first offending row, if any."""

    def __init__(self, message: str, *, row: int | None = None) -> None:
        self.row = row
        where = f"row {row}: " if row is not None else ""
        super().__init__(f"invalid data: {where}{message}")


class UnknownStrategy(EngineError):
    """No strategy of that name is registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"unknown strategy {name!r}; known strategies: {', '.join(sorted(known))}")


class InvalidParameter(EngineError):
    """A parameter is unknown, of the wrong type or out of range; `name` says which one."""

    def __init__(self, message: str, *, name: str) -> None:
        self.name = name
        super().__init__(f"invalid parameter {name!r}: {message}")


class InvalidCombination(InvalidParameter):
    """Each parameter is valid alone but together they break a rule (e.g. fast >= slow); `name` is one."""
