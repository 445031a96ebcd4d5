"""API keys and tenants: keys are kept only as SHA-256 digests, compared in constant time.

`ENGINE_API_KEYS` keeps its format: comma-separated entries, each a plain key or `sha256:<64 hex>` of one
(so the plain key need not sit in the Secret). An entry may name its tenant, `tenant:key` (or
`tenant:sha256:<hex>`): keys of one tenant share its datasets, backtests and jobs. A key without a tenant
is its own tenant, named `key-<first 12 hex digits of its digest>`. `ENGINE_ADMIN_KEYS` (same format)
lists the keys of the service's operators: an admin reads, lists and cancels across tenants.

Requests are matched by hashing the presented `X-API-Key` and comparing digests with
`hmac.compare_digest` against every configured key, so timing says nothing about which one matched, and
neither a heap dump nor a log line can reveal a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

API_KEY_HEADER = "X-API-Key"
HASHED_PREFIX = "sha256:"
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
RESERVED_TENANTS = frozenset({"sha256"})
ANONYMOUS = "anonymous"
"""The tenant of every request when authentication is disabled (ENGINE_AUTH=disabled, development only)."""
LEGACY = "legacy"
"""The tenant of rows written before tenants existed (or by an older engine during a rollout)."""


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def configured_digest(entry: str) -> bytes:
    """The digest of one key: a plain key, or `sha256:<hex>` of one."""
    if entry.startswith(HASHED_PREFIX):
        text = entry.removeprefix(HASHED_PREFIX)
        try:
            value = bytes.fromhex(text)
        except ValueError:
            value = b""
        if len(value) != hashlib.sha256().digest_size:
            raise ValueError("a hashed API key must be sha256: followed by 64 hex digits")
        return value
    return digest(entry)


def parse_entry(entry: str) -> tuple[str | None, bytes]:
    """(tenant or None, digest) of one ENGINE_API_KEYS entry; ValueError naming what is wrong."""
    tenant: str | None = None
    key = entry
    if not entry.startswith(HASHED_PREFIX) and ":" in entry:
        tenant, key = entry.split(":", 1)
        if not TENANT_PATTERN.match(tenant) or tenant in RESERVED_TENANTS:
            raise ValueError(
                f"tenant {tenant!r} must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        if not key:
            raise ValueError(f"tenant {tenant!r} has an empty key")
    return tenant, configured_digest(key)


@dataclass(frozen=True)
class Principal:
    """Who made a request: its tenant, a short non-reversible key id (logs, rate limits), admin or not."""

    tenant: str
    key_id: str
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The tenant whose objects this principal may see; None (every tenant) for an admin."""
        return None if self.admin else self.tenant


@dataclass(frozen=True)
class _Key:
    digest: bytes
    tenant: str
    admin: bool


class KeyRing:
    """The configured keys as digests. `enabled=False` (ENGINE_AUTH=disabled) accepts every request."""

    def __init__(self, keys: Iterable[str], admin_keys: Iterable[str] = (), *, enabled: bool = True) -> None:
        entries = [(k, False) for k in keys if k] + [(k, True) for k in admin_keys if k]
        parsed = []
        for entry, admin in entries:
            tenant, value = parse_entry(entry)
            parsed.append(_Key(value, tenant or f"key-{value.hex()[:12]}", admin))
        self._keys = tuple(parsed)
        self._enabled = enabled

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def configured(self) -> bool:
        """At least one key exists; with auth enabled and no key, every API request is refused."""
        return bool(self._keys)

    @property
    def _digests(self) -> tuple[bytes, ...]:
        return tuple(key.digest for key in self._keys)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal of a valid key, or None; checks every digest so timing does not leak a match."""
        if not self._enabled:
            return Principal(tenant=ANONYMOUS, key_id=ANONYMOUS)
        if not presented:
            return None
        candidate = digest(presented)
        matched: _Key | None = None
        for known in self._keys:
            if hmac.compare_digest(candidate, known.digest):
                matched = known
        if matched is None:
            return None
        return Principal(tenant=matched.tenant, key_id=matched.digest.hex()[:12], admin=matched.admin)
