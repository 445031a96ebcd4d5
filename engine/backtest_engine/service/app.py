"""The FastAPI application: `create_app(settings)` wires store, auth, rate limits, jobs, faults, metrics.

Handlers that touch the database or run the library are plain `def`, so FastAPI runs them in its worker
threads and the event loop stays free for health checks and metrics scrapes while a backtest computes.
Every API route depends on `Access.principal` (auth, limits) and passes the principal's tenant scope to
the store: another tenant's object is a 404, exactly like one that does not exist.
Middleware order, outermost first: instrumentation (metrics, last-resort 500), CORS, gzip, body size
limit, fault injection, then FastAPI's routing, validation and exception handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import sqlalchemy.exc
from fastapi import Depends, FastAPI, File, Form, Path, Query, Request, Response, Security, UploadFile
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader

from backtest_engine import __version__
from backtest_engine.backtest import run_backtest
from backtest_engine.data import synthetic_ohlcv
from backtest_engine.errors import EngineError, InvalidData
from backtest_engine.metrics import metric_names
from backtest_engine.optimize import parameter_grid, random_parameters
from backtest_engine.service import datasets, exports
from backtest_engine.service.access import Access
from backtest_engine.service.auth import API_KEY_HEADER, KeyRing, Principal
from backtest_engine.service.backtests import SUMMARY_METRICS, Backtests, detail, summary
from backtest_engine.service.bodylimit import BodyLimit
from backtest_engine.service.clients import ClientAddresses
from backtest_engine.service.faults import FaultInjection, biased
from backtest_engine.service.instrumentation import Instrumentation
from backtest_engine.service.jobrows import JobBounds
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
from backtest_engine.service.ratelimit import SharedRateLimiter
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
from backtest_engine.service.sweeps import Sweeps
from backtest_engine.strategies import list_strategies

log = logging.getLogger("backtest_engine.service")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}} for code in (401, 422, 429)
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem}}
API_KEY = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="one of ENGINE_API_KEYS")


def current_principal(request: Request, api_key: Annotated[str | None, Security(API_KEY)]) -> Principal:
    """The caller (auth and limits, see access.py); a plain `def`, so its database round trips leave the loop."""
    access: Access = request.app.state.access
    return access.principal(request, api_key)


Caller = Annotated[Principal, Depends(current_principal)]


def warm_up() -> None:
    """One small backtest before the server accepts requests (so before readiness answers): the first
    requests a new pod serves, a canary's or an evicted pod's replacement's, then do not pay for first-call
    set-up, which a rollout comparing the canary's latency with stable's would read as the release's."""
    run_backtest(synthetic_ohlcv(300, seed=0), "sma_crossover", {"fast": 5, "slow": 20})


def create_app(settings: ServiceSettings) -> FastAPI:
    """A ready-to-serve app for `settings` (the store is migrated now, or on first use if unreachable)."""
    metrics = EngineMetrics(settings.version, settings.track)
    store = Store(settings.database_url)
    keyring = KeyRing(settings.keys, settings.admins, enabled=settings.auth == "enabled")
    access = Access(
        keyring,
        ClientAddresses(settings.proxy_token),
        SharedRateLimiter(store.engine, store.dialect, settings.rate_limit),
        SharedRateLimiter(store.engine, store.dialect, settings.auth_failure_limit),
        rate_limit=settings.rate_limit,
        failure_limit=settings.auth_failure_limit,
    )
    backtests = Backtests(store, metrics, settings.version, settings.cache_size)
    bounds = JobBounds(max_active=settings.max_queued_jobs, max_per_tenant=settings.max_jobs_per_tenant)
    schema = {"ready": False}
    jobs: JobRunner | Sweeps
    if store.dialect == "postgresql":  # every replica takes chunks of every sweep (sweeps.py)
        jobs = Sweeps(
            store, backtests.load, bounds=bounds, chunk_size=settings.sweep_chunk_size,
            concurrency=settings.workers, shutdown_seconds=settings.shutdown_seconds / 2,
            ready=lambda: schema["ready"],
        )  # fmt: skip
    else:  # one process owns the SQLite file: its own threads run the jobs (jobs.py)
        jobs = JobRunner(
            store, metrics, backtests.load, max_jobs=settings.max_jobs, workers=settings.workers, bounds=bounds
        )
    limits = datasets.UploadLimits(settings.max_upload_rows, settings.max_upload_uncompressed_bytes)
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
        log.warning("event=auth_disabled reason=ENGINE_AUTH=disabled; every API request is accepted (development only)")
    elif not keyring.configured:
        log.warning("event=no_api_keys reason=ENGINE_API_KEYS is empty; every API request is refused with 401")
    if settings.faults_enabled:
        log.warning(
            "event=faults_enabled error_rate=%g latency_seconds=%g result_bias=%g",
            settings.fault_error_rate,
            settings.fault_latency_seconds,
            settings.fault_result_bias,
        )
    bias = settings.fault_result_bias  # silent corruption of reported results (rehearsals only)

    def reported(job: dict[str, Any]) -> dict[str, Any]:
        return {**job, "best": [biased(entry, bias) for entry in job["best"]]} if bias else job

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info("event=started version=%s track=%s database=%s", settings.version, settings.track, store.describe())
        with contextlib.suppress(ServiceProblem):
            ensure_schema()
        await asyncio.to_thread(warm_up)
        if isinstance(jobs, Sweeps):
            await jobs.start()
        else:
            jobs.start()
        yield
        # uvicorn has stopped accepting and drained requests (SIGTERM); running jobs get the rest of the budget
        if isinstance(jobs, Sweeps):
            await jobs.stop()
        else:
            await asyncio.to_thread(jobs.shutdown, settings.shutdown_seconds / 2)
        store.dispose()

    app = FastAPI(
        title="backtest-engine",
        version=__version__,
        description="Backtests, optimizations and exports over HTTP. Authenticate with the `X-API-Key` header.",
        lifespan=lifespan,
        # Served below behind authentication: with auth on, only health, readiness and metrics are open.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.metrics = metrics
    app.state.jobs = jobs

    app.state.access = access
    authenticated = [Depends(current_principal)]

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
                "result_bias": settings.fault_result_bias,
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

    @app.get("/openapi.json", dependencies=authenticated, include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        """The OpenAPI description, for callers holding a key (or any caller with auth disabled)."""
        return JSONResponse(app.openapi())

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
        who: Caller,
        response: Response,
        file: Annotated[UploadFile, File(description="CSV or Parquet: time, open, high, low, close, volume")],
        symbol: Annotated[Symbol, Form()],
        name: Annotated[str | None, Form(max_length=200)] = None,
    ) -> dict[str, Any]:
        """Upload OHLCV data; it is bounded (rows, size) before loading, validated (errors name the row) and
        stored for the caller's tenant. Same tenant and content, same id."""
        ensure_schema()
        content = file.file.read(settings.max_upload_bytes + 1)
        if len(content) > settings.max_upload_bytes:
            raise ServiceProblem(413, f"upload larger than {settings.max_upload_bytes} bytes")
        try:
            datasets.check_upload(content, file.filename or "", limits)
        except datasets.UploadTooLarge as error:
            raise ServiceProblem(413, str(error)) from None
        try:
            frame = datasets.parse_upload(content, file.filename or "")
        except InvalidData as error:
            raise FieldError("file", str(error)) from None
        del content
        row = datasets.dataset_row(frame, name or file.filename or symbol, symbol, who.tenant)
        stored, created = store.add_dataset(row)
        if not created:
            response.status_code = 200
        return _dataset_info(stored)

    @app.get(
        "/api/v1/datasets", response_model=DatasetPage, dependencies=authenticated, responses=ERRORS, tags=["datasets"]
    )
    def list_datasets(
        who: Caller,
        symbol: Annotated[Symbol | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> dict[str, Any]:
        ensure_schema()
        rows, total = store.list_datasets(who.scope, symbol=symbol, limit=limit, offset=offset)
        return {"items": [_dataset_info(r) for r in rows], "total": total, "limit": limit, "offset": offset}

    @app.get(
        "/api/v1/datasets/{dataset_id}",
        response_model=DatasetInfo,
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND},
        tags=["datasets"],
    )
    def get_dataset(who: Caller, dataset_id: DatasetId) -> dict[str, Any]:
        ensure_schema()
        row = store.get_dataset(dataset_id, who.scope)
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
    def create_backtest(who: Caller, body: BacktestRequest, response: Response) -> dict[str, Any]:
        """Run a backtest, or return the tenant's stored result of an identical request (`cached: true`, 200)."""
        ensure_schema()
        row, cached = backtests.run(body, who.tenant, who.scope)
        if cached:
            response.status_code = 200
        return biased(detail(row, cached), bias)

    @app.get(
        "/api/v1/backtests",
        response_model=BacktestPage,
        dependencies=authenticated,
        responses=ERRORS,
        tags=["backtests"],
    )
    def list_backtests(
        who: Caller,
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
        rows, total = store.list_backtests(query, SUMMARY_METRICS, who.scope)
        items = [biased(summary(r, r["metrics"]), bias) for r in rows]
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    def stored_backtest(backtest_id: str, who: Principal) -> dict[str, Any]:
        ensure_schema()
        row = store.get_backtest(backtest_id, who.scope)
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
    def get_backtest(who: Caller, backtest_id: Annotated[str, _id_path()]) -> dict[str, Any]:
        """All metrics, the trades and the equity curve of a stored backtest."""
        return biased(detail(stored_backtest(backtest_id, who), cached=True), bias)

    @app.get(
        "/api/v1/backtests/{backtest_id}/export",
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND, 200: {"content": {"text/plain": {}, "text/csv": {}, "text/html": {}}}},
        response_class=PlainTextResponse,
        tags=["backtests"],
    )
    def export_backtest(
        who: Caller,
        backtest_id: Annotated[str, _id_path()],
        format: Annotated[Literal["pine", "csv", "html"], Query()] = "html",
    ) -> Response:
        """Pine Script of the strategy with its parameters, the trade list as CSV, or an HTML report."""
        row = stored_backtest(backtest_id, who)
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
        responses={**ERRORS, **NOT_FOUND, 503: {"model": Problem}},
        tags=["optimizations"],
    )
    def start_optimization(who: Caller, body: OptimizationRequest) -> dict[str, Any]:
        """Start a parameter search in the background; poll `GET .../{id}` for progress and best results.

        429 with Retry-After when the service or the tenant has too many optimizations queued or running.
        """
        ensure_schema()
        if body.metric not in metric_names():
            raise FieldError("metric", "unknown metric; see docs/metrics.md (e.g. sharpe_ratio)")
        backtests.load(body, who.tenant)  # 404/422 now rather than a failed job later; the job loads it again
        try:
            if body.method == "grid":
                candidates = parameter_grid(body.strategy, body.space)
            else:
                candidates = random_parameters(body.strategy, body.space, body.samples, seed=body.seed)
        except EngineError as error:
            raise engine_error_field(error, params_prefix="space") from None
        return status(jobs.submit(body, who.tenant, len(candidates)))

    @app.get(
        "/api/v1/optimizations/{job_id}",
        response_model=OptimizationStatus,
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND},
        tags=["optimizations"],
    )
    def get_optimization(who: Caller, job_id: Annotated[str, _id_path()]) -> dict[str, Any]:
        """State, progress and the best parameter sets found so far."""
        ensure_schema()
        row = jobs.get(job_id, who.scope)
        if row is None:
            raise NotFound("optimization", job_id)
        return reported(status(row))

    @app.delete(
        "/api/v1/optimizations/{job_id}",
        response_model=OptimizationStatus,
        status_code=202,
        dependencies=authenticated,
        responses={**ERRORS, **NOT_FOUND, 409: {"model": Problem}},
        tags=["optimizations"],
    )
    def cancel_optimization(who: Caller, job_id: Annotated[str, _id_path()]) -> dict[str, Any]:
        """Cancel a queued or running job; it stops after the chunk in progress, keeping its results."""
        ensure_schema()
        current = jobs.get(job_id, who.scope)
        if current is None:
            raise NotFound("optimization", job_id)
        if current["state"] in FINAL_STATES:
            raise ServiceProblem(409, f"optimization {job_id} already {current['state']}")
        row = jobs.cancel(job_id, who.scope)
        if row is None:
            raise NotFound("optimization", job_id)
        return reported(status(row))

    # add_middleware puts the last added outermost: instrumentation, CORS, gzip, body limit, faults, the app.
    app.add_middleware(
        FaultInjection,
        error_rate=settings.fault_error_rate,
        latency_seconds=settings.fault_latency_seconds,
        rng=random.Random(settings.fault_seed),
    )
    app.add_middleware(BodyLimit, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(GZipMiddleware, minimum_size=settings.gzip_minimum_bytes)
    if settings.origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[API_KEY_HEADER, "Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
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
