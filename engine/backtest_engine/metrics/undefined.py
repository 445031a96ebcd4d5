"""When each metric is undefined: the condition under which it is reported as None (JSON null), never 0.

A ratio over zero trades or over a flat equity curve has no value. Reporting it as 0 (as the engine once
did) ranks a parameter set that never traded above every set with a negative Sharpe ratio; None makes
rankings put it last and keeps it out of best-of. Metrics not listed here are always defined.
"""

from __future__ import annotations

NO_TRADES = "there are no trades"
FLAT = "per-bar returns have no variation (flat equity)"
FLAT_BENCHMARK = "the benchmark has no variation"
NO_DRAWDOWN = "equity never falls below a previous peak"

UNDEFINED_WHEN: dict[str, str] = {
    # core
    "sharpe_ratio": FLAT,
    "sortino_ratio": "no per-bar excess return is negative",
    "calmar_ratio": NO_DRAWDOWN,
    "recovery_factor": NO_DRAWDOWN,
    # trading
    "win_rate": NO_TRADES,
    "long_win_rate": "there are no long trades",
    "short_win_rate": "there are no short trades",
    "profit_factor": "no trade lost (the ratio is unbounded)",
    "expectancy": NO_TRADES,
    "average_trade_return": NO_TRADES,
    "average_winning_trade": "no trade won",
    "average_losing_trade": "no trade lost",
    "best_trade_return": NO_TRADES,
    "worst_trade_return": NO_TRADES,
    "largest_win": NO_TRADES,
    "largest_loss": NO_TRADES,
    "payoff_ratio": "no trade won or no trade lost",
    "average_bars_held": NO_TRADES,
    "max_bars_held": NO_TRADES,
    "sqn": "fewer than 2 trades, or all trades have the same pnl",
    "kelly_criterion": "no trade won or no trade lost",
    # risk
    "ulcer_performance_index": NO_DRAWDOWN,
    "pain_ratio": NO_DRAWDOWN,
    "tail_ratio": "the 5th percentile of per-bar returns is 0",
    "gain_to_pain_ratio": "no per-bar return is negative",
    "common_sense_ratio": "no per-bar return is negative, or the 5th percentile is 0",
    "burke_ratio": NO_DRAWDOWN,
    # advanced
    "alpha": f"{FLAT_BENCHMARK}, or the mean active loss is 100% per bar",
    "beta": FLAT_BENCHMARK,
    "correlation": f"{FLAT_BENCHMARK} or the run has none",
    "information_ratio": "active returns (run minus benchmark) have no variation",
    "treynor_ratio": f"beta is 0 or undefined ({FLAT_BENCHMARK})",
    "up_capture": "the benchmark never rose, or its CAGR over those bars is 0",
    "down_capture": "the benchmark never fell, or its CAGR over those bars is 0",
    "omega_ratio": "no per-bar excess return is negative",
    "stability": "cumulative log returns are constant (flat equity)",
    "autocorrelation": "fewer than 3 bars, or per-bar returns have no variation",
    "probabilistic_sharpe_ratio": "fewer than 3 bars, or per-bar returns have no variation",
    "rolling_sharpe_mean": "fewer bars than one rolling window, or every window is flat",
    "rolling_sharpe_min": "fewer bars than one rolling window, or every window is flat",
    "rolling_sharpe_std": "fewer than two rolling windows with variation",
    "rolling_volatility_max": "fewer bars than one rolling window",
    # structure
    "bos_success_rate": "no break of structure can be judged yet (none H bars before the end)",
    "average_bos_move": "no break of structure can be judged yet (none H bars before the end)",
    "average_pivot_spacing": "fewer than two pivots",
}
