"""The FastAPI application: `create_app(settings)` wires store, auth, rate limits, jobs, faults, metrics.

Handlers that touch the database or run the library are plain `def`, so FastAPI runs them in its worker
threads and the event loop stays free for health checks and metrics scrapes while a backtest computes.
Middleware order, outermost first: instrumentation (metrics, last-resort 500), body size limit, fault
injection, then FastAPI's routing, validation and exception handlers.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import sqlalchemy.exc
from fastapi import Depends, FastAPI, File, Form, Path, Query, Request, Response, Security, UploadFile
from fastapi.responses import PlainTextResponse
from fastapi.security import APIKeyHeader

from backtest_engine import __version__
from backtest_engine.errors import EngineError, InvalidData
from backtest_engine.metrics import metric_names
from backtest_engine.optimize import parameter_grid, random_parameters
from backtest_engine.service import datasets, exports
from backtest_engine.service.auth import API_KEY_HEADER, KeyRing, Principal
from backtest_engine.service.backtests import SUMMARY_METRICS, Backtests, detail, summary
from backtest_engine.service.bodylimit import BodyLimit
from backtest_engine.service.faults import FaultInjection
from backtest_engine.service.instrumentation import Instrumentation
from backtest_engine.service.jobs import FINAL_STATES, JobRunner, status
from backtest_engine.service.metrics import CONTENT_TYPE, EngineMetrics
from backtest_engine.service.problems import (
    FieldError,
    NotFound,
    ServiceProblem,
    engine_error_field,
    install_handlers,
    problem,
)
from backtest_engine.service.ratelimit import RateLimiter
from backtest_engine.service.schemas import (
    BacktestDetail,
    BacktestPage,
    BacktestRequest,
    DatasetId,
    DatasetInfo,
    DatasetPage,
    Health,
    OptimizationRequest,
    OptimizationStatus,
    Problem,
    Ready,
    StrategyInfo,
    Symbol,
    Timestamp,
)
from backtest_engine.service.settings import ServiceSettings
from backtest_engine.service.store import BacktestQuery, Store, parse_metric_filter, sort_key_valid
from backtest_engine.strategies import list_strategies

log = logging.getLogger("backtest_engine.service")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}} for code in (401, 422, 429)
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}
API_KEY = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="one of ENGINE_API_KEYS")


def create_app(settings: ServiceSettings) -> FastAPI:
    """A ready-to-serve app for `settings` (the store is migrated now, or on first use if unreachable)."""
    metrics = EngineMetrics(settings.version, settings.track)
    store = Store(settings.database_url)
    keyring = KeyRing(settings.keys)
    limiter = RateLimiter(settings.rate_limit)
    backtests = Backtests(store, metrics, settings.version, settings.cache_size)
    jobs = JobRunner(store, metrics, max_jobs=settings.max_jobs, workers=settings.workers)
    schema = {"ready": False}
    strategy_catalog = list_strategies()  # the registry is fixed once imported; building schemas costs ms

    def ensure_schema() -> None:
        if not schema["ready"]:
            try:
                store.migrate()
            except sqlalchemy.exc.SQLAlchemyError:
                log.warning("event=migration_failed database=%s", store.describe(), exc_info=True)
                raise ServiceProblem(503, "the results database is unavailable") from None
            schema["ready"] = True

    with contextlib.suppress(ServiceProblem):  # /api/v1/ready says so; requests retry the migration
        ensure_schema()
    if not keyring.enabled:
        log.warning("event=auth_disabled reason=ENGINE_API_KEYS is empty; every API request is accepted")
    if settings.faults_enabled:
        log.warning(
            "event=faults_enabled error_rate=%g latency_seconds=%g",
            settings.fault_error_rate,
            settings.fault_latency_seconds,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info("event=started version=%s track=%s database=%s", settings.version, settings.track, store.describe())
        yield
        jobs.shutdown()
        store.dispose()

    app = FastAPI(
        title="backtest-engine",
        version=__version__,
        description="Backtests, optimizations and exports over HTTP. Authenticate with the `X-API-Key` header.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = metrics
    app.state.jobs = jobs

    async def principal(request: Request, api_key: Annotated[str | None, Security(API_KEY)]) -> Principal:
        """Authenticate and take a rate-limit token; async because it never blocks (no thread hop)."""
        who = keyring.authenticate(api_key)
        if who is None:
            detail = "missing API key" if not api_key else "invalid API key"
            raise ServiceProblem(
                401, f"{detail}: send it in the {API_KEY_HEADER} header", headers={"WWW-Authenticate": "ApiKey"}
            )
        bucket = who.key_id if keyring.enabled else f"client:{request.client.host if request.client else '?'}"
        wait = limiter.take(bucket)
        if wait:
            raise ServiceProblem(
                429,
                f"rate limit of {settings.rate_limit} requests per minute exceeded",
                headers={"Retry-After": str(wait)},
            )
        return who

    authenticated = [Depends(principal)]

    install_handlers(app)

    # -- operations --------------------------------------------------------------------------------------------

    @app.get("/api/v1/health", response_model=Health, tags=["operations"])
    async def health() -> dict[str, Any]:
        """Liveness: answers while the process serves; never touches the database."""
        return {
            "status": "ok",
            "version": settings.version,
            "track": settings.track,
            "auth": "enabled" if keyring.enabled else "disabled",
            "faults": {
                "enabled": settings.faults_enabled,
                "error_rate": settings.fault_error_rate,
                "latency_seconds": settings.fault_latency_seconds,
            },
        }

    @app.get("/api/v1/ready", response_model=Ready, responses={503: {"model": Problem}}, tags=["operations"])
    def ready() -> Any:
        """Readiness: the database answers and the schema is current."""
        ensure_schema()
        if not store.ping():
            return problem(503, "the results database is unavailable", headers={"Retry-After": "5"})
        return {"status": "ready", "database": store.dialect}

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def prometheus_metrics() -> Response:
        """Prometheus exposition of the engine's series."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    # -- strategies and datasets -------------------------------------------------------------------------------

    @app.get(
        "/api/v1/strategies",
        response_model=list[StrategyInfo],
        dependencies=authenticated,
        responses=ERRORS,
        tags=["strategies"],
    )
    async def strategies() -> list[dict[str, Any]]:
        """Every registered strategy with its defaults and the JSON schema of its parameters."""
        return strategy_catalog

    @app.post(
        "/api/v1/datasets",
        response_model=DatasetInfo,
        status_code=201,
        dependencies=authenticated,
        responses={
            **ERRORS,
            200: {"model": DatasetInfo, "description": "the same data was uploaded before"},
            413: {"model": Problem},
        },
        tags=["datasets"],
    )
    def upload_dataset(
        response: Response,
        file: Annotated[UploadFile, File(description="CSV or Parquet: time, open, high, low, close, volume")],
        symbol: Annotated[Symbol, Form()],
        name: Annotated[str | None, Form(max_length=200)] = None,
    ) -> dict[str, Any]:
        """Upload OHLCV data; it is validated (errors name the row) and stored. Same content, same id."""
        ensure_schema()
        content = file.file.read(settings.max_upload_bytes + 1)
        if len(content) > settings.max_upload_bytes:
            raise ServiceProblem(413, f"upload larger than {settings.max_upload_bytes} bytes")
        try:
            frame = datasets.parse_upload(content, file.filename or "")
        except InvalidData as error:
            raise FieldError("file", str(error)) from None
        row = datasets.dataset_row(frame, name or file.filename or symbol, symbol)
        stored, created = store.add_dataset(row)
        if not created:
            response.status_code = 200
        return _dataset_info(stored)

    @app.get(
        "/api/v1/datasets", response_model=DatasetPage, dependencies=authenticated, responses=ERRORS, tags=["datasets"]
    )
    def list_datasets(
        symbol: Annotated[Symbol | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> dict[str, Any]:
        ensure_schema()
        rows, total = store.list_datasets(symbol=symbol, limit=limit, offset=offset)
        return {"items": [_dataset_info(r) for r in rows], "total": total, "limit": limit, "offset": offset}

    @app.get(
        "/api/v1/datasets/{dataset_id}",
        response_model=DatasetInfo,
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND},
        tags=["datasets"],
    )
    def get_dataset(dataset_id: DatasetId) -> dict[str, Any]:
        ensure_schema()
        row = store.get_dataset(dataset_id)
        if row is None:
            raise NotFound("dataset", dataset_id)
        return _dataset_info(row)

    # -- backtests ---------------------------------------------------------------------------------------------

    @app.post(
        "/api/v1/backtests",
        response_model=BacktestDetail,
        status_code=201,
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND, 200: {"model": BacktestDetail, "description": "cached result"}},
        tags=["backtests"],
    )
    def create_backtest(body: BacktestRequest, response: Response) -> dict[str, Any]:
        """Run a backtest, or return the stored result of an identical request (`cached: true`, 200)."""
        ensure_schema()
        row, cached = backtests.run(body)
        if cached:
            response.status_code = 200
        return detail(row, cached)

    @app.get(
        "/api/v1/backtests",
        response_model=BacktestPage,
        dependencies=authenticated,
        responses=ERRORS,
        tags=["backtests"],
    )
    def list_backtests(
        strategy: Annotated[str | None, Query(max_length=64)] = None,
        symbol: Annotated[Symbol | None, Query()] = None,
        dataset_id: Annotated[DatasetId | None, Query()] = None,
        start: Annotated[Timestamp, Query(description="data starting at or after this time")] = None,
        end: Annotated[Timestamp, Query(description="data ending at or before this time")] = None,
        metric: Annotated[
            list[str], Query(max_length=20, description="metric filters such as `sharpe_ratio>=1` (repeatable)")
        ] = [],  # noqa: B006 - FastAPI copies defaults per request
        sort: Annotated[
            str, Query(max_length=64, description="created_at or a metric name; prefix - for descending")
        ] = "-created_at",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> dict[str, Any]:
        """Stored backtests, newest first by default, filtered by strategy, symbol, dataset, dates and metrics."""
        ensure_schema()
        names = metric_names()
        filters = []
        for text in metric:
            try:
                filters.append(parse_metric_filter(text, names))
            except ValueError as error:
                raise FieldError("metric", str(error)) from None
        if not sort_key_valid(sort, names):
            raise FieldError("sort", "expected created_at or a metric name, optionally prefixed with -")
        query = BacktestQuery(strategy, symbol, dataset_id, start, end, tuple(filters), sort, limit, offset)
        rows, total = store.list_backtests(query, SUMMARY_METRICS)
        return {"items": [summary(r, r["metrics"]) for r in rows], "total": total, "limit": limit, "offset": offset}

    def stored_backtest(backtest_id: str) -> dict[str, Any]:
        ensure_schema()
        row = store.get_backtest(backtest_id)
        if row is None:
            raise NotFound("backtest", backtest_id)
        return row

    @app.get(
        "/api/v1/backtests/{backtest_id}",
        response_model=BacktestDetail,
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND},
        tags=["backtests"],
    )
    def get_backtest(backtest_id: Annotated[str, _id_path()]) -> dict[str, Any]:
        """All metrics, the trades and the equity curve of a stored backtest."""
        return detail(stored_backtest(backtest_id), cached=True)

    @app.get(
        "/api/v1/backtests/{backtest_id}/export",
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND, 200: {"content": {"text/plain": {}, "text/csv": {}, "text/html": {}}}},
        response_class=PlainTextResponse,
        tags=["backtests"],
    )
    def export_backtest(
        backtest_id: Annotated[str, _id_path()], format: Annotated[Literal["pine", "csv", "html"], Query()] = "html"
    ) -> Response:
        """Pine Script of the strategy with its parameters, the trade list as CSV, or an HTML report."""
        row = stored_backtest(backtest_id)
        name = f"backtest-{row['id']}"
        if format == "pine":
            return Response(
                exports.pine_script(row), media_type="text/plain; charset=utf-8", headers=_attachment(f"{name}.pine")
            )
        if format == "csv":
            return Response(
                exports.trades_csv(row), media_type="text/csv; charset=utf-8", headers=_attachment(f"{name}-trades.csv")
            )
        return Response(exports.html_report(row), media_type="text/html; charset=utf-8")

    # -- optimizations -----------------------------------------------------------------------------------------

    @app.post(
        "/api/v1/optimizations",
        response_model=OptimizationStatus,
        status_code=202,
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND},
        tags=["optimizations"],
    )
    def start_optimization(body: OptimizationRequest) -> dict[str, Any]:
        """Start a parameter search in the background; poll `GET .../{id}` for progress and best results."""
        ensure_schema()
        if body.metric not in metric_names():
            raise FieldError("metric", "unknown metric; see docs/metrics.md (e.g. sharpe_ratio)")
        data = backtests.load(body)
        try:
            if body.method == "grid":
                candidates = parameter_grid(body.strategy, body.space)
            else:
                candidates = random_parameters(body.strategy, body.space, body.samples, seed=body.seed)
        except EngineError as error:
            raise engine_error_field(error, params_prefix="space") from None
        job = jobs.submit(body, data, len(candidates))
        return status({**job.row(), "updated_at": job.updated_at})

    @app.get(
        "/api/v1/optimizations/{job_id}",
        response_model=OptimizationStatus,
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND},
        tags=["optimizations"],
    )
    def get_optimization(job_id: Annotated[str, _id_path()]) -> dict[str, Any]:
        """State, progress and the best parameter sets found so far."""
        ensure_schema()
        row = jobs.get(job_id)
        if row is None:
            raise NotFound("optimization", job_id)
        return status(row)

    @app.delete(
        "/api/v1/optimizations/{job_id}",
        response_model=OptimizationStatus,
        status_code=202,
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND, 409: {"model": Problem}},
        tags=["optimizations"],
    )
    def cancel_optimization(job_id: Annotated[str, _id_path()]) -> dict[str, Any]:
        """Cancel a queued or running job; it stops after the chunk in progress, keeping its results."""
        ensure_schema()
        current = jobs.get(job_id)
        if current is None:
            raise NotFound("optimization", job_id)
        if current["state"] in FINAL_STATES:
            raise ServiceProblem(409, f"optimization {job_id} already {current['state']}")
        row = jobs.cancel(job_id)
        if row is None:
            raise NotFound("optimization", job_id)
        return status(row)

    # add_middleware puts the last added outermost: instrumentation, body limit, faults, then the app.
    app.add_middleware(
        FaultInjection,
        error_rate=settings.fault_error_rate,
        latency_seconds=settings.fault_latency_seconds,
        rng=random.Random(settings.fault_seed),
    )
    app.add_middleware(BodyLimit, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(Instrumentation, metrics=metrics, routes=lambda: app.routes)
    return app


def _id_path() -> Any:
    return Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")


def _attachment(filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


def _dataset_info(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "symbol": row["symbol"],
        "timeframe": row["timeframe"],
        "bars": row["bars"],
        "start": row["start_time"],
        "end": row["end_time"],
        "size_bytes": row["size_bytes"],
        "created_at": row["created_at"],
    }
