"""backtest-engine: a vectorized numpy/pandas backtesting library, its HTTP service and traffic router.

The library API (what the service, the CLI and notebooks call):
`run_backtest`, `list_strategies`, `optimize`, `walk_forward`, `load_ohlcv`, `validate_ohlcv`,
`synthetic_ohlcv`, and the error hierarchy rooted at `EngineError`.
"""

from backtest_engine.backtest import BacktestResult, run_backtest
from backtest_engine.data import load_ohlcv, synthetic_ohlcv, validate_ohlcv
from backtest_engine.errors import EngineError, InvalidData, InvalidParameter, UnknownStrategy
from backtest_engine.metrics import all_metrics
from backtest_engine.optimize import OptimizationResult, WalkForwardResult, optimize, walk_forward
from backtest_engine.strategies import list_strategies

__version__ = "0.1.0"

__all__ = [
    "BacktestResult",
    "EngineError",
    "InvalidData",
    "InvalidParameter",
    "OptimizationResult",
    "UnknownStrategy",
    "WalkForwardResult",
    "__version__",
    "all_metrics",
    "list_strategies",
    "load_ohlcv",
    "optimize",
    "run_backtest",
    "synthetic_ohlcv",
    "validate_ohlcv",
    "walk_forward",
]
