"""RFC 7807 problem responses, and the exceptions the service raises to produce them.

Every error leaves the service in one shape, `{"type", "title", "status", "detail"}` (plus `errors` on
422, one entry per invalid field), and none carries a stack trace, a SQL statement or a file path: the
details of unexpected errors go to the log under a correlation id that the response repeats.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from backtest_engine.errors import EngineError, InvalidData, InvalidParameter, UnknownStrategy
from backtest_engine.service.schemas import Execution

PROBLEM_MEDIA_TYPE = "application/problem+json"
EXECUTION_FIELDS = set(Execution.model_fields)
log = logging.getLogger("backtest_engine.service")


class ServiceProblem(Exception):
    """An error with an HTTP status and a message safe to show to the client."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.errors = errors


class FieldError(ServiceProblem):
    """422 naming one request field (dotted path, e.g. `params.fast`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(422, f"{field}: {message}", errors=[{"field": field, "message": message}])
        self.field = field


class NotFound(ServiceProblem):
    def __init__(self, what: str, ident: str) -> None:
        super().__init__(404, f"no {what} with id {ident!r}")


def problem(
    status: int, detail: str, *, headers: dict[str, str] | None = None, errors: list[dict[str, str]] | None = None
) -> JSONResponse:
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def problem_bytes(status: int, detail: str) -> bytes:
    """The body of a problem for code paths outside FastAPI (pure ASGI middleware)."""
    return bytes(problem(status, detail).body)


def validation_errors(errors: list[Any]) -> list[dict[str, str]]:
    """FastAPI's validation errors as `{field, message}`; the location prefix (body/query) is dropped."""
    out = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        if location and location[0] in ("body", "query", "path", "header", "form"):
            location = location[1:]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        out.append({"field": ".".join(location) or "body", "message": message})
    return out


def engine_error_field(error: EngineError, params_prefix: str = "params") -> FieldError:
    """Name the request field a library error is about (`params.fast`, `execution.cash`, `strategy`)."""
    if isinstance(error, UnknownStrategy):
        return FieldError("strategy", str(error))
    if isinstance(error, InvalidParameter):
        prefix = "execution" if error.name in EXECUTION_FIELDS else params_prefix
        return FieldError(f"{prefix}.{error.name}", str(error))
    if isinstance(error, InvalidData):
        return FieldError("dataset_id", str(error))
    return FieldError("body", str(error))


def install_handlers(app: FastAPI) -> None:
    """Route every known error type to a problem response."""

    @app.exception_handler(ServiceProblem)
    async def _service_problem(_: Request, exc: ServiceProblem) -> JSONResponse:
        return problem(exc.status, exc.detail, headers=exc.headers, errors=exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(list(exc.errors()))
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return problem(422, detail or "invalid request", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(EngineError)
    async def _engine(_: Request, exc: EngineError) -> JSONResponse:
        field = engine_error_field(exc)
        return problem(field.status, field.detail, errors=field.errors)

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    async def _database(_: Request, exc: sqlalchemy.exc.OperationalError) -> JSONResponse:
        log.warning("event=database_error error=%s", type(exc.orig).__name__ if exc.orig else "unknown")
        return problem(503, "the results database is unavailable", headers={"Retry-After": "5"})
