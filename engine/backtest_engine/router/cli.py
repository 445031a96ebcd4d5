"""Command line of the router: `backtest-engine router ...` (mounted by the engine's CLI) and
`python -m backtest_engine.router ...` (same arguments), serving `RouterApp` with uvicorn.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from backtest_engine.router.app import (
    DEFAULT_CANARY_TIMEOUT_SECONDS,
    DEFAULT_STABLE_TIMEOUT_SECONDS,
    ConfigError,
    RouterApp,
    RouterConfig,
)
from backtest_engine.router.forwarding import DEFAULT_MAX_BODY_BYTES
from backtest_engine.router.metrics import DEFAULT_LATENCY_OBJECTIVE_SECONDS
from backtest_engine.router.shadow import DEFAULT_MAX_IN_FLIGHT
from backtest_engine.router.upstream import MAX_CONNECTION_AGE_SECONDS
from backtest_engine.router.weights import (
    ConfigMapWeightSource,
    FileWeightSource,
    WeightSource,
    parse_configmap_ref,
)

LOG_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
DESCRIPTION = (
    "Reverse proxy in front of the stable and canary services: each request goes to the canary with "
    "probability weight/100; failed idempotent canary requests are re-served by stable."
)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within 0 and 1, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the router's arguments to `parser` (shared by the subcommand and `python -m`)."""
    parser.add_argument("--stable", required=True, metavar="URL", help="base URL of the stable service")
    parser.add_argument("--canary", required=True, metavar="URL", help="base URL of the canary service")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weight-file", type=Path, metavar="PATH", help="file holding one integer 0-100")
    source.add_argument("--weight-configmap", metavar="NS/NAME", help="ConfigMap whose data key 'weight' holds 0-100")
    parser.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    parser.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    parser.add_argument(
        "--latency-objective",
        type=_positive_float,
        default=DEFAULT_LATENCY_OBJECTIVE_SECONDS,
        metavar="SECONDS",
        help="latency objective; a histogram bucket bound (default 2)",
    )
    parser.add_argument(
        "--canary-timeout",
        type=_positive_float,
        default=DEFAULT_CANARY_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="abandon a canary attempt after this long and fall back (default 5; must exceed the objective)",
    )
    parser.add_argument(
        "--stable-timeout",
        type=_positive_float,
        default=DEFAULT_STABLE_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="give up on stable after this long and answer 504 (default 60)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="a connection not made within this is a transport failure (default 1)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help="largest request body buffered for replay; larger ones get 413 (default: the engine's upload "
        f"limit, {DEFAULT_MAX_BODY_BYTES // 2**20} MiB)",
    )
    parser.add_argument("--max-connections", type=int, default=256, metavar="N", help="pooled connections per upstream")
    parser.add_argument(
        "--upstream-max-connection-age",
        type=_positive_float,
        default=MAX_CONNECTION_AGE_SECONDS,
        metavar="SECONDS",
        help="close an upstream connection after this long even when busy, so a Service selector switch "
        f"reaches every request (default {MAX_CONNECTION_AGE_SECONDS:g})",
    )
    parser.add_argument(
        "--shadow-fraction",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="share (0-1) of stable-served, repeatable requests also sent to the canary in the background and "
        "compared (default 0: off)",
    )
    parser.add_argument(
        "--shadow-max-in-flight",
        type=_positive_int,
        default=DEFAULT_MAX_IN_FLIGHT,
        metavar="N",
        help="shadow copies running at once; a sampled request beyond this is skipped "
        f"(default {DEFAULT_MAX_IN_FLIGHT})",
    )
    parser.add_argument(
        "--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="event loop (auto: uvloop)"
    )
    parser.add_argument(
        "--http", default="auto", choices=["auto", "h11", "httptools"], help="HTTP parser (auto: httptools)"
    )
    parser.add_argument(
        "--keep-alive-timeout",
        type=_positive_int,
        default=75,
        metavar="SECONDS",
        help="close idle client connections after this (default 75, above common client pool expiries, so a "
        "client rarely reuses a connection the router is closing)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--access-log", action="store_true", help="log every request (off: costly)")


def add_router_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Mount `router` as a subcommand; the parsed namespace carries `func=run_router`."""
    parser = subparsers.add_parser("router", help="run the traffic router", description=DESCRIPTION)
    configure_parser(parser)
    parser.set_defaults(func=run_router)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backtest_engine.router", description=DESCRIPTION)
    configure_parser(parser)
    return parser


def weight_source_from_args(args: argparse.Namespace) -> WeightSource:
    if args.weight_file is not None:
        return FileWeightSource(Path(args.weight_file))
    namespace, name = parse_configmap_ref(args.weight_configmap)
    return ConfigMapWeightSource(namespace, name)


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    config = RouterConfig(
        stable_url=args.stable,
        canary_url=args.canary,
        latency_objective_seconds=args.latency_objective,
        canary_timeout_seconds=args.canary_timeout,
        stable_timeout_seconds=args.stable_timeout,
        connect_timeout_seconds=args.connect_timeout,
        max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections,
        max_connection_age_seconds=args.upstream_max_connection_age,
        shadow_fraction=args.shadow_fraction,
        shadow_max_in_flight=args.shadow_max_in_flight,
        proxy_token=os.environ.get("ROUTER_PROXY_TOKEN", ""),  # a secret: from the environment, never argv
    )
    config.validate()
    return config


def run_router(args: argparse.Namespace) -> int:
    """Serve the router until SIGINT/SIGTERM (uvicorn drains in-flight requests); 2 on bad settings."""
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    try:
        config = config_from_args(args)
        source = weight_source_from_args(args)
        app = RouterApp(config, source)
    except (ConfigError, ValueError) as exc:
        print(f"backtest-engine router: error: {exc}", file=sys.stderr)
        return 2
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            lifespan="on",
            access_log=args.access_log,
            log_config=None,
            log_level=args.log_level,
            loop=args.loop,
            http=args.http,
            server_header=False,
            timeout_keep_alive=args.keep_alive_timeout,
            proxy_headers=False,  # the router is the first hop: client addresses come from the socket
            date_header=False,
        )
    )
    server.run()
    return 0 if server.started else 1
