"""backtest-engine: a vectorized numpy/pandas backtesting library, its HTTP service and traffic router."""

__version__ = "0.1.0"
