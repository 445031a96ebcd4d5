"""A deliberately naive, bar-by-bar implementation of the execution rules of docs/engine.md.

It shares no code with the vectorized core: tests replay random targets through both and compare, so a
vectorization bug cannot hide behind a test that only checks the code against itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class ReferenceRun:
    equity: list[float] = field(default_factory=list)
    trades: list[dict[str, float]] = field(default_factory=list)


def reference_simulate(
    opens,
    highs,
    lows,
    closes,
    target,
    *,
    cash,
    commission=0.0,
    slippage_bps=0.0,
    fraction=1.0,
    lot_size=0.0,
    stop_loss=None,
    take_profit=None,
) -> ReferenceRun:
    slip = slippage_bps / 10_000
    run = ReferenceRun()
    balance = cash  # cash account
    units = 0.0  # signed units held
    direction = 0
    entry_price = entry_fee = 0.0
    entry_bar = 0
    stop_level = take_level = None
    n = len(closes)

    def close_position(raw_price: float, bar: int) -> None:
        nonlocal balance, units, direction
        exit_price = raw_price * (1 - direction * slip)
        exit_fee = abs(units) * exit_price * commission
        balance += units * exit_price - exit_fee
        pnl = units * (exit_price - entry_price) - entry_fee - exit_fee
        run.trades.append(
            {
                "entry_bar": entry_bar,
                "exit_bar": bar,
                "size": units,
                "entry_price": entry_price,
                "exit_price": exit_price,
                "pnl": pnl,
            }
        )
        units, direction = 0.0, 0

    for t in range(n):
        wanted = 0 if t == 0 else int(np.sign(target[t - 1]))
        previously_wanted = 0 if t <= 1 else int(np.sign(target[t - 2]))
        if wanted != previously_wanted:
            if direction != 0:
                close_position(opens[t], t)
            if wanted != 0:
                equity_now = balance  # flat at this point
                price = opens[t] * (1 + wanted * slip)
                size = fraction * equity_now / (price + price * commission)
                if lot_size > 0:
                    size = math.floor(size / lot_size) * lot_size
                if size > 0:
                    direction, units = wanted, wanted * size
                    entry_price, entry_bar = price, t
                    entry_fee = size * price * commission
                    balance -= units * price + entry_fee
                    stop_level = price * (1 - wanted * stop_loss) if stop_loss else None
                    take_level = price * (1 + wanted * take_profit) if take_profit else None
        if direction != 0 and (stop_level is not None or take_level is not None):
            long = direction > 0
            hit_stop = stop_level is not None and (lows[t] <= stop_level if long else highs[t] >= stop_level)
            hit_take = take_level is not None and (highs[t] >= take_level if long else lows[t] <= take_level)
            if hit_stop:  # the worse of the two when both could have triggered
                close_position(min(opens[t], stop_level) if long else max(opens[t], stop_level), t)
            elif hit_take:
                close_position(max(opens[t], take_level) if long else min(opens[t], take_level), t)
        if t == n - 1 and direction != 0:
            close_position(closes[t], t)
        run.equity.append(balance + units * closes[t])
    return run
