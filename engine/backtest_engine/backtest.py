"""The library's front door: `run_backtest(data, strategy, params, ...) -> BacktestResult`.

It validates the data and the parameters, generates the strategy's targets, runs the execution core and
computes the metrics. The HTTP service and the CLI call this and nothing deeper, so its signature and the
shape of `BacktestResult.to_dict()` are the engine's public contract.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from backtest_engine.data import infer_periods_per_year, validate_ohlcv
from backtest_engine.errors import InvalidParameter
from backtest_engine.execution import EXIT_REASONS, ExecutionConfig, Simulation, simulate
from backtest_engine.indicators import Bars
from backtest_engine.metrics import MetricContext, compute_metrics
from backtest_engine.strategies import StructureEvents, generate_signals, validate_params

TRADE_COLUMNS = [
    "entry_time",
    "exit_time",
    "direction",
    "size",
    "entry_price",
    "exit_price",
    "pnl",
    "return",
    "fees",
    "bars_held",
    "exit_reason",
]


@dataclass
class BacktestResult:
    """Metrics, trades and the per-bar equity curve of one run, plus what produced them."""

    strategy: str
    params: dict[str, Any]
    config: ExecutionConfig
    metrics: dict[str, float | None]
    """Metric name -> value; None where undefined for this run (docs/metrics.md)."""
    trades: pd.DataFrame
    equity: pd.Series
    periods_per_year: float
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, include_equity: bool = False) -> dict[str, Any]:
        """JSON-ready form: timestamps as ISO strings, floats finite (undefined metrics are None)."""
        trades = [
            {
                **{k: _json_value(v) for k, v in row.items()},
                "entry_time": row["entry_time"].isoformat(),
                "exit_time": row["exit_time"].isoformat(),
            }
            for row in self.trades.to_dict(orient="records")
        ]
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "params": self.params,
            "config": {
                "cash": self.config.cash,
                "commission": self.config.commission,
                "slippage_bps": self.config.slippage_bps,
                "fraction": self.config.fraction,
                "lot_size": self.config.lot_size,
                "stop_loss": self.config.stop_loss,
                "take_profit": self.config.take_profit,
                "periods_per_year": self.periods_per_year,
            },
            "metrics": self.metrics,
            "trades": trades,
        }
        if include_equity:
            out["equity"] = [
                {"time": ts.isoformat(), "equity": float(value)}
                for ts, value in zip(pd.DatetimeIndex(self.equity.index), self.equity.to_numpy(), strict=True)
            ]
        return out


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def bars_from_frame(frame: pd.DataFrame) -> Bars:
    """Arrays of a validated OHLCV frame, ready for strategies and the execution core."""

    def column(name: str) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
        return frame[name].to_numpy(dtype=np.float64)

    return Bars(column("open"), column("high"), column("low"), column("close"), column("volume"))


def trades_frame(sim: Simulation, index: pd.DatetimeIndex) -> pd.DataFrame:
    """The trade list of a simulation as a DataFrame with the documented columns."""
    notional = np.abs(sim.size) * sim.entry_price
    with np.errstate(divide="ignore", invalid="ignore"):
        returns = np.where(notional > 0, sim.pnl / notional, 0.0)
    frame = pd.DataFrame(
        {
            "entry_time": index[sim.entry_bar],
            "exit_time": index[sim.exit_bar],
            "direction": pd.Categorical.from_codes((sim.direction > 0).astype(np.int8), pd.Index(["short", "long"])),
            "size": sim.size,
            "entry_price": sim.entry_price,
            "exit_price": sim.exit_price,
            "pnl": sim.pnl,
            "return": returns,
            "fees": sim.fees,
            "bars_held": sim.exit_bar - sim.entry_bar,
            "exit_reason": pd.Categorical.from_codes(sim.exit_reason, pd.Index(list(EXIT_REASONS))),
        },
        columns=TRADE_COLUMNS,
    )
    return frame


def metric_context(
    sim: Simulation,
    bars: Bars,
    config: ExecutionConfig,
    periods_per_year: float,
    *,
    risk_free_rate: float = 0.0,
    structure: StructureEvents | None = None,
    benchmark_returns: np.ndarray | None = None,
) -> MetricContext:
    """Assemble the metric inputs of a simulation (benchmark: buy and hold the instrument)."""
    if benchmark_returns is None:
        benchmark_returns = np.concatenate(([0.0], bars.close[1:] / bars.close[:-1] - 1.0))
    notional = np.abs(sim.size) * sim.entry_price
    with np.errstate(divide="ignore", invalid="ignore"):
        trade_return = np.where(notional > 0, sim.pnl / notional, 0.0)
    return MetricContext(
        equity=sim.equity,
        initial_cash=config.cash,
        periods_per_year=periods_per_year,
        units=sim.units,
        close=bars.close,
        trade_pnl=sim.pnl,
        trade_return=trade_return,
        trade_bars_held=sim.exit_bar - sim.entry_bar,
        trade_direction=sim.direction,
        trade_fees=sim.fees,
        trade_exit_reason=sim.exit_reason,
        trade_notional=notional,
        benchmark_returns=np.asarray(benchmark_returns, dtype=np.float64),
        risk_free_rate=risk_free_rate,
        structure=structure,
    )


def resolve_periods_per_year(index: pd.DatetimeIndex, periods_per_year: float | None) -> float:
    if periods_per_year is None:
        return infer_periods_per_year(index)
    if not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise InvalidParameter(f"must be positive, got {periods_per_year}", name="periods_per_year")
    return float(periods_per_year)


def run_backtest(
    data: pd.DataFrame,
    strategy: str,
    params: dict[str, Any] | None = None,
    *,
    cash: float = 10_000.0,
    commission: float = 0.0,
    slippage_bps: float = 0.0,
    fraction: float = 1.0,
    lot_size: float = 0.0,
    stop_loss: float | None = None,
    take_profit: float | None = None,
    periods_per_year: float | None = None,
    risk_free_rate: float = 0.0,
    benchmark: pd.Series | None = None,
    validate: bool = True,
) -> BacktestResult:
    """Backtest `strategy` with `params` on OHLCV `data`; see docs/engine.md for the execution rules.

    Raises `InvalidData`, `UnknownStrategy` or `InvalidParameter` for bad input. `benchmark`, if given, is
    a price series aligned to the data used instead of buy-and-hold for the benchmark-relative metrics.
    `validate=False` skips data validation for frames that already went through `validate_ohlcv`.
    """
    frame = validate_ohlcv(data) if validate else data
    config = ExecutionConfig(
        cash=cash,
        commission=commission,
        slippage_bps=slippage_bps,
        fraction=fraction,
        lot_size=lot_size,
        stop_loss=stop_loss,
        take_profit=take_profit,
    )
    if not math.isfinite(risk_free_rate) or not -1 < risk_free_rate < 1:
        raise InvalidParameter(f"must be in (-1, 1), got {risk_free_rate}", name="risk_free_rate")
    model = validate_params(strategy, params)
    ppy = resolve_periods_per_year(pd.DatetimeIndex(frame.index), periods_per_year)
    bars = bars_from_frame(frame)
    signals = generate_signals(bars, strategy, model)
    sim = simulate(bars.open, bars.high, bars.low, bars.close, signals.target, config=config)
    benchmark_returns = None
    if benchmark is not None:
        prices = benchmark.reindex(frame.index).ffill().bfill().to_numpy(dtype=np.float64)
        benchmark_returns = np.concatenate(([0.0], prices[1:] / prices[:-1] - 1.0))
    context = metric_context(
        sim,
        bars,
        config,
        ppy,
        risk_free_rate=risk_free_rate,
        structure=signals.structure,
        benchmark_returns=benchmark_returns,
    )
    index = pd.DatetimeIndex(frame.index)
    return BacktestResult(
        strategy=strategy,
        params=model.model_dump(),
        config=config,
        metrics=compute_metrics(context),
        trades=trades_frame(sim, index),
        equity=pd.Series(sim.equity, index=index, name="equity"),
        periods_per_year=ppy,
        extras={"cash": sim.cash, "units": sim.units, "target": signals.target},
    )
