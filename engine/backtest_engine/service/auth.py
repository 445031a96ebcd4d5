"""API keys, kept only as SHA-256 digests and compared in constant time.

The plain keys are read once from ENGINE_API_KEYS and hashed at start, so neither a heap dump nor a log
line can reveal them; requests are matched by hashing the presented `X-API-Key` and comparing digests
with `hmac.compare_digest`, against every configured key, so timing says nothing about which one matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

API_KEY_HEADER = "X-API-Key"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class Principal:
    """Who made a request: `key_id` is a short, non-reversible name of the key (for rate limits, logs)."""

    key_id: str


class KeyRing:
    """The configured keys as digests; an empty ring means authentication is disabled."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(digest(key) for key in keys if key)

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
