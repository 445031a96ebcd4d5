"""Names of the BacktestService API and its control annotations, without any import behind them.

The kubectl plugin imports only this (and the standard library) on its way to the API server, so that
every command starts in a few tens of milliseconds; ``api`` re-exports the same names next to the models.
"""

from __future__ import annotations

GROUP = "backtest.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "BacktestService"
PLURAL = "backtestservices"
SINGULAR = "backtestservice"
SHORT_NAMES = ["bts"]

CONTROL_ANNOTATIONS = {
    "promote": f"{GROUP}/promote",
    "promote_full": f"{GROUP}/promote-full",
    "abort": f"{GROUP}/abort",
    "retry": f"{GROUP}/retry",
}
"""Control request annotations (see ``controls``), by request name."""
