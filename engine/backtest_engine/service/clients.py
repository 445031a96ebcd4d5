"""Who is on the other end: the client address, taken from X-Forwarded-For only when the router sent it.

Behind the router every request arrives from the router's address, so limits keyed by the socket peer
would make one client exhaust everyone's. The router therefore appends the client's address to
X-Forwarded-For and proves itself with a shared token (`X-Backtest-Proxy-Token`, ENGINE_PROXY_TOKEN on the
engine, ROUTER_PROXY_TOKEN on the router). Without the right token the header is ignored, so a client
talking to an engine directly cannot pick its own address. The rightmost X-Forwarded-For entry is the
one the router added (earlier entries come from the client and prove nothing).
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

PROXY_TOKEN_HEADER = "x-backtest-proxy-token"
FORWARDED_FOR = "x-forwarded-for"


class ClientAddresses:
    """Resolves the client address of a request; `token` empty means no proxy is trusted."""

    def __init__(self, token: str) -> None:
        self._token = hashlib.sha256(token.encode()).digest() if token else None

    @property
    def trusts_proxy(self) -> bool:
        return self._token is not None

    def from_proxy(self, request: Request) -> bool:
        presented = request.headers.get(PROXY_TOKEN_HEADER)
        if self._token is None or not presented:
            return False
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._token)

    def address(self, request: Request) -> str:
        peer = request.client.host if request.client else "unknown"
        if not self.from_proxy(request):
            return peer
        chain = [entry.strip() for entry in request.headers.get(FORWARDED_FOR, "").split(",") if entry.strip()]
        return chain[-1] if chain else peer
