"""`backtest-engine serve`: run the HTTP service under uvicorn.

The lead mounts it with `add_serve_parser(subparsers)`, which sets `func=run_serve`; settings come from
the environment (ENGINE_*, DATABASE_URL), listen address from the flags. Bad settings exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from backtest_engine.service.settings import SettingsError, load_settings

EXIT_BAD_INPUT = 2
LOG_FORMAT = "time=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def add_serve_parser(subparsers: Any) -> None:
    """Add the `serve` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser("serve", help="run the HTTP API (settings from ENGINE_* and DATABASE_URL)")
    configure_parser(parser)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    parser.add_argument("--access-log", action="store_true", help="log every request (off: metrics count them)")
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted; 2 when a setting is invalid."""
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"backtest-engine serve: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not 0 < args.port < 65536:
        print(f"backtest-engine serve: --port must be 1-65535, got {args.port}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True)
    from backtest_engine.service.app import create_app  # noqa: PLC0415 - after logging is configured

    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        access_log=args.access_log,
        log_config=None,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_seconds / 2)),  # jobs get the other half
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backtest_engine.service", description=__doc__.splitlines()[0])
    configure_parser(parser)
    args = parser.parse_args(argv)
    return run_serve(args)
