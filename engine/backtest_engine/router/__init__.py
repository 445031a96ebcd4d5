"""Traffic router between the stable and canary tracks of the engine (see docs/router.md).

Counting rules and series names follow docs/metrics-contract.md; `cli.add_router_parser`/`cli.run_router` mount it as
`backtest-engine router`.
"""

from backtest_engine.router.app import RouterApp, RouterConfig
from backtest_engine.router.cli import add_router_parser, run_router

__all__ = ["RouterApp", "RouterConfig", "add_router_parser", "run_router"]
