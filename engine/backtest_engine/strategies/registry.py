"""The strategy registry: named strategies, their typed parameter schemas and their signal functions.

A strategy is a pure function from `Bars` (OHLCV arrays with an indicator memo) and a validated pydantic
parameter model to `Signals`: the target position after each bar's close (+1 long, -1 short, 0 flat).
The execution core turns targets into orders at the next bar's open, so a strategy cannot peek ahead by
construction as long as its indicators are causal (tests check this property for every strategy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from backtest_engine.errors import InvalidCombination, InvalidParameter, UnknownStrategy
from backtest_engine.execution import clean_target
from backtest_engine.indicators import Bars

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class CrossFieldError(ValueError):
    """Raised by a schema's model validator when parameters conflict; names the field to blame."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field_name = field_name
        super().__init__(message)


class StrategyParams(BaseModel):
    """Base of every parameter schema: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class StructureEvents:
    """Market-structure events a structure strategy detected, as bar positions (for its metrics)."""

    swing_highs: IntArray
    swing_lows: IntArray
    bullish_bos: IntArray
    bearish_bos: IntArray
    success_horizon: int


@dataclass(frozen=True)
class Signals:
    """Target position per bar, decided on that bar's close, plus optional diagnostics."""

    target: FloatArray
    structure: StructureEvents | None = None


P = TypeVar("P", bound=StrategyParams)
SignalFunction = Callable[[Bars, Any], Signals]


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: its name, family, one-line summary, parameter schema and signal function."""

    name: str
    family: str
    summary: str
    params_model: type[StrategyParams]
    generate: SignalFunction = field(repr=False)

    def defaults(self) -> dict[str, Any]:
        return self.params_model().model_dump()

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: name, family, summary, defaults and the JSON schema of the parameters."""
        return {
            "name": self.name,
            "family": self.family,
            "summary": self.summary,
            "defaults": self.defaults(),
            "parameters": self.params_model.model_json_schema(),
        }


_REGISTRY: dict[str, StrategySpec] = {}


def register(
    name: str, params_model: type[P], *, family: str, summary: str
) -> Callable[[Callable[[Bars, P], Signals]], Callable[[Bars, P], Signals]]:
    """Decorator that adds a signal function to the registry under `name`."""

    def decorate(function: Callable[[Bars, P], Signals]) -> Callable[[Bars, P], Signals]:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} registered twice")
        _REGISTRY[name] = StrategySpec(name, family, summary, params_model, function)
        return function

    return decorate


def get_strategy(name: str) -> StrategySpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownStrategy(name, list(_REGISTRY)) from None


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


def list_strategies() -> list[dict[str, Any]]:
    """Every registered strategy with its parameters (JSON schema) and defaults, sorted by name."""
    return [_REGISTRY[name].describe() for name in strategy_names()]


def validate_params(name: str, params: dict[str, Any] | None) -> StrategyParams:
    """Validate raw parameters (strings from a CLI are coerced) or raise `InvalidParameter` naming one."""
    spec = get_strategy(name)
    try:
        return spec.params_model.model_validate(dict(params or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        cause = first.get("ctx", {}).get("error")
        if isinstance(cause, CrossFieldError):
            raise InvalidCombination(str(cause), name=cause.field_name) from None
        location = ".".join(str(part) for part in first["loc"]) or "params"
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            known = ", ".join(spec.params_model.model_fields)
            message = f"unknown parameter for {name}; known: {known}"
        raise InvalidParameter(message, name=location) from None


def generate_signals(bars: Bars, name: str, params: StrategyParams) -> Signals:
    """Run a strategy's signal function and check its output shape and values."""
    signals = get_strategy(name).generate(bars, params)
    target = clean_target(signals.target)
    if target.shape != (bars.size,):
        raise ValueError(f"strategy {name} returned {target.shape} targets for {bars.size} bars")
    return Signals(target=target, structure=signals.structure)
