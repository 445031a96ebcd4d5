"""A tiny upstream HTTP service standing in for an engine track in router tests and benchmarks.

Run as `python tests/support/upstream.py --port P`. Behaviour is set by environment, so one script plays
a healthy stable or a faulty canary:
  UPSTREAM_NAME           echoed in the `x-upstream` header and the JSON body (default "upstream")
  UPSTREAM_ERROR_RATE     fraction of proxied requests answered with UPSTREAM_ERROR_STATUS (default 0)
  UPSTREAM_ERROR_STATUS   status of those failures (default 503)
  UPSTREAM_DELAY_SECONDS  added to every request (default 0)
  UPSTREAM_SEED           seed of the error draw, for reproducible runs (default: random)
  UPSTREAM_RESULT_FILE    a file whose bytes answer every GET /api/v1/backtests/<id> (a full engine
                          result, for benchmarks of shadow comparisons; default: none)
Paths: `/status/<code>` answers that code, `/delay/<seconds>` sleeps first, `/echo` returns the request
(method, target, headers, body length), `/_stats` returns requests seen by method (not counted itself).
Anything else answers 200 with a small JSON body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import uvicorn

NAME = os.environ.get("UPSTREAM_NAME", "upstream")
ERROR_RATE = float(os.environ.get("UPSTREAM_ERROR_RATE", "0"))
ERROR_STATUS = int(os.environ.get("UPSTREAM_ERROR_STATUS", "503"))
DELAY = float(os.environ.get("UPSTREAM_DELAY_SECONDS", "0"))
_seed = os.environ.get("UPSTREAM_SEED")
RNG = random.Random(int(_seed)) if _seed else random.Random()
SEEN: Counter[str] = Counter()
PAYLOAD = json.dumps({"upstream": NAME, "ok": True}).encode()
_result_file = os.environ.get("UPSTREAM_RESULT_FILE")
RESULT = Path(_result_file).read_bytes() if _result_file else None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path: str = scope["path"]
    if path == "/_stats":
        await _answer(send, 200, json.dumps({"upstream": NAME, "seen": dict(SEEN)}).encode())
        return
    SEEN[scope["method"]] += 1
    SEEN["total"] += 1
    if DELAY:
        await asyncio.sleep(DELAY)
    if path.startswith("/delay/"):
        await asyncio.sleep(float(path.removeprefix("/delay/")))
    if path.startswith("/status/"):
        code = int(path.removeprefix("/status/"))
        await _answer(send, code, json.dumps({"upstream": NAME, "status": code}).encode())
        return
    if ERROR_RATE and RNG.random() < ERROR_RATE:
        await _answer(send, ERROR_STATUS, json.dumps({"upstream": NAME, "error": "injected"}).encode())
        return
    if RESULT is not None and path.startswith("/api/v1/backtests/"):
        await _answer(send, 200, RESULT)
        return
    if path == "/echo":
        echo = {
            "upstream": NAME,
            "method": scope["method"],
            "target": (scope.get("raw_path") or b"").decode() + "?" + scope["query_string"].decode(),
            "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
            "body_length": len(body),
        }
        await _answer(send, 200, json.dumps(echo).encode())
        return
    await _answer(send, 200, PAYLOAD)


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-upstream", NAME.encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
