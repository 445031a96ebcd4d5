"""The engine's HTTP service (`backtest-engine serve`): FastAPI app, results store, jobs, exports, metrics.

Entry points: `create_app(settings)` for tests and embedding, `cli.add_serve_parser` / `cli.run_serve` for
the `backtest-engine serve` subcommand, and `python -m backtest_engine.service`.
"""

from backtest_engine.service.app import create_app
from backtest_engine.service.settings import ServiceSettings, load_settings

__all__ = ["ServiceSettings", "create_app", "load_settings"]
