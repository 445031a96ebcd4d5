"""Request body limits, enforced while the body streams in, before anything buffers or parses it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backtest_engine.service.problems import PROBLEM_MEDIA_TYPE, problem_bytes

UPLOAD_PATH = "/api/v1/datasets"
MAX_JSON_BYTES = 1024 * 1024


class BodyLimit:
    """413 for request bodies over the limit, declared or actual, before anything parses them.

    Dataset uploads may reach ENGINE_MAX_UPLOAD_BYTES; every other body (JSON) is capped at
    `max_json_bytes`, so no client can make the service buffer an arbitrarily large document.
    """

    def __init__(self, app: ASGIApp, *, max_upload_bytes: int, max_json_bytes: int = MAX_JSON_BYTES) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.max_upload_bytes if scope.get("path") == UPLOAD_PATH else self.max_json_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(send, limit)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._reject(send, limit)

    async def _reject(self, send: Send, limit: int) -> None:
        body = problem_bytes(413, f"request body larger than {limit} bytes")
        headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
