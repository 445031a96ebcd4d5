"""API keys, kept only as SHA-256 digests and compared in constant time.

The keys are read once from ENGINE_API_KEYS and hashed at start, so neither a heap dump nor a log line
can reveal them. An entry may also be given already hashed, as `sha256:<64 hex digits>`, so the plain
key need not sit in the Secret at all; requests are matched by hashing the presented `X-API-Key` and comparing digests
with `hmac.compare_digest`, against every configured key, so timing says nothing about which one matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

API_KEY_HEADER = "X-API-Key"
HASHED_PREFIX = "sha256:"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def configured_digest(entry: str) -> bytes:
    """The digest of one ENGINE_API_KEYS entry: a plain key, or `sha256:<hex>` of one."""
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


@dataclass(frozen=True)
class Principal:
    """Who made a request: `key_id` is a short, non-reversible name of the key (for rate limits, logs)."""

    key_id: str


class KeyRing:
    """The configured keys as digests; an empty ring means authentication is disabled."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(configured_digest(key) for key in keys if key)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def authenticate(self, presented: str | None) -> Principal | None:
        """The principal of a valid key, or None; checks every digest so timing does not leak a match."""
        if not self.enabled:
            return Principal(key_id="anonymous")
        if not presented:
            return None
        candidate = digest(presented)
        matched: bytes | None = None
        for known in self._digests:
            if hmac.compare_digest(candidate, known):
                matched = known
        if matched is None:
            return None
        return Principal(key_id=matched.hex()[:12])
