"""Who may call the API, and how often: authentication, the failed-authentication limit, the rate limit.

One FastAPI dependency (`Access.principal`) runs before every API route: it authenticates the key (401),
limits failed attempts per client address (429 after ENGINE_AUTH_FAILURE_LIMIT a minute, so keys cannot
be guessed at speed), and takes a token from the key's bucket (429 beyond ENGINE_RATE_LIMIT a minute).
Both limits live in the database every replica shares. It is a plain `def`: the limits cost a database
round trip, which FastAPI runs in a worker thread instead of on the event loop.
"""

from __future__ import annotations

import logging

from fastapi import Request

from backtest_engine.service.auth import API_KEY_HEADER, KeyRing, Principal
from backtest_engine.service.clients import ClientAddresses
from backtest_engine.service.problems import ServiceProblem
from backtest_engine.service.ratelimit import Limiter

log = logging.getLogger("backtest_engine.service.access")


class Access:
    def __init__(
        self,
        keyring: KeyRing,
        clients: ClientAddresses,
        requests: Limiter,
        failures: Limiter,
        *,
        rate_limit: int,
        failure_limit: int,
    ) -> None:
        self.keyring = keyring
        self.clients = clients
        self.requests = requests
        self.failures = failures
        self.rate_limit = rate_limit
        self.failure_limit = failure_limit

    def principal(self, request: Request, api_key: str | None) -> Principal:
        """The caller of an API route, or a 401/429 problem."""
        who = self.keyring.authenticate(api_key)
        if who is None:
            self._refuse(request, api_key)
        assert who is not None
        bucket = who.key_id if self.keyring.enabled else f"client:{self.clients.address(request)}"
        wait = self.requests.take(f"requests:{bucket}")
        if wait:
            raise ServiceProblem(
                429, f"rate limit of {self.rate_limit} requests per minute exceeded", headers={"Retry-After": str(wait)}
            )
        return who

    def _refuse(self, request: Request, api_key: str | None) -> None:
        address = self.clients.address(request)
        wait = self.failures.take(f"auth-failures:{address}")
        if wait:
            log.warning("event=auth_failures_limited client=%s", address)
            raise ServiceProblem(
                429,
                f"too many failed authentications from {address} (limit {self.failure_limit} per minute); retry later",
                headers={"Retry-After": str(wait)},
            )
        if not self.keyring.configured:
            detail = "no API key is configured (ENGINE_API_KEYS); ENGINE_AUTH=disabled turns authentication off"
        else:
            detail = "missing API key" if not api_key else "invalid API key"
        raise ServiceProblem(
            401, f"{detail}: send it in the {API_KEY_HEADER} header", headers={"WWW-Authenticate": "ApiKey"}
        )
