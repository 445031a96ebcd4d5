"""Waiting for a started server to become healthy, with a deadline and an error naming it and its log."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from backtest_devtools import processes
from backtest_devtools.errors import ClusterError


def wait_healthy(managed: processes.Managed, url: str, tls: ssl.SSLContext | None, timeout: float) -> None:
    """Poll `url` until it answers 200; fail at once if the process exits, or after `timeout` seconds."""
    started = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - started < timeout:
        if not managed.is_running():
            raise ClusterError(managed.name, "exited before becoming healthy", managed.log)
        status, body = http("GET", url, tls)
        if status == 200:
            return
        last = f"{status} {body[:300]}"
        time.sleep(0.25)
    raise ClusterError(managed.name, f"not healthy after {timeout:.0f}s at {url} (last answer: {last})", managed.log)


def insecure_tls() -> ssl.SSLContext:
    """For /healthz endpoints served with a self-signed certificate of the component's own."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def http(
    method: str,
    url: str,
    tls: ssl.SSLContext | None,
    body: dict[str, Any] | None = None,
    content_type: str = "application/json",
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=5, context=tls) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)
