"""RFC 7807 problem responses, and the exceptions the service raises to produce them.

Every error leaves the service in one shape, `{"type", "title", "status", "detail"}` (plus `errors` on
422, one entry per invalid field), and none carries a stack trace, a SQL statement or a file path: the
details of unexpected errors go to the log under a correlation id that the response repeats.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

PROBLEM_MEDIA_TYPE = "application/problem+json"


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
