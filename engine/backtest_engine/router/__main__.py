"""`python -m backtest_engine.router`: the router without the engine's top-level CLI."""

from __future__ import annotations

import sys

from backtest_engine.router.cli import build_parser, run_router


def main(argv: list[str] | None = None) -> int:
    return run_router(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
