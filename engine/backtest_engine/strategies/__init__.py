"""Named, parameterized strategies. Importing this package registers every built-in strategy."""

from backtest_engine.strategies import breakout, reversion, structure, trend
from backtest_engine.strategies.registry import (
    Signals,
    StrategyParams,
    StrategySpec,
    StructureEvents,
    generate_signals,
    get_strategy,
    list_strategies,
    strategy_names,
    validate_params,
)

__all__ = [
    "Signals",
    "StrategyParams",
    "StrategySpec",
    "StructureEvents",
    "breakout",
    "generate_signals",
    "get_strategy",
    "list_strategies",
    "reversion",
    "strategy_names",
    "structure",
    "trend",
    "validate_params",
]
