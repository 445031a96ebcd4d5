"""API keys (hashed, constant-time) and per-key token buckets, with an injected clock."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from backtest_engine.service.auth import KeyRing, Principal, digest
from backtest_engine.service.ratelimit import RateLimiter
from backtest_engine.service.settings import ServiceSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keyring_keeps_only_digests_when_built():
    ring = KeyRing(["secret-one"])
    assert b"secret-one" not in repr(vars(ring)).encode()
    assert ring._digests == (digest("secret-one"),)


def test_keyring_names_keys_by_a_stable_non_reversible_id_when_they_match():
    ring = KeyRing(["a", "b"])
    first, second = ring.authenticate("a"), ring.authenticate("b")
    assert first is not None and second is not None
    assert first.key_id != second.key_id and first.key_id == ring.authenticate("a").key_id
    assert first.key_id != "a" and len(first.key_id) == 12


def test_keyring_refuses_when_the_key_is_missing_or_unknown():
    ring = KeyRing(["a"])
    assert ring.authenticate(None) is None
    assert ring.authenticate("") is None
    assert ring.authenticate("A") is None


def test_keyring_refuses_everyone_when_no_key_is_configured_and_auth_is_on():
    ring = KeyRing([])
    assert ring.enabled and not ring.configured
    assert ring.authenticate(None) is None and ring.authenticate("anything") is None


def test_keyring_accepts_everyone_as_anonymous_only_when_disabled():
    ring = KeyRing(["a"], enabled=False)
    assert ring.authenticate(None) == Principal(tenant="anonymous", key_id="anonymous")


def test_keys_are_their_own_tenants_unless_grouped_and_admins_see_every_tenant():
    hashed = "sha256:" + hashlib.sha256(b"k3").hexdigest()
    ring = KeyRing(["k1", "desk:k2", f"desk:{hashed}"], ["ops:root"])
    k1, k2, k3, root = (ring.authenticate(k) for k in ("k1", "k2", "k3", "root"))
    assert k1.tenant.startswith("key-") and k1.scope == k1.tenant and not k1.admin
    assert k2.tenant == k3.tenant == "desk" and k2.key_id != k3.key_id
    assert root.admin and root.tenant == "ops" and root.scope is None


@pytest.mark.parametrize("entry", ["bad tenant:k", ":k", "desk:", "sha256:zz", "sha256:k"])
def test_settings_refuse_a_key_entry_when_it_is_malformed(entry):
    with pytest.raises(ValidationError):
        ServiceSettings(api_keys=entry)


def test_bucket_allows_a_burst_up_to_the_rate_then_refuses_when_empty():
    clock = FakeClock()
    limiter = RateLimiter(60, clock=clock)
    assert [limiter.take("k") for _ in range(60)] == [0] * 60
    assert limiter.take("k") == 1  # one token per second at 60/min


def test_bucket_refills_over_time_when_the_client_waits():
    clock = FakeClock()
    limiter = RateLimiter(6, clock=clock)  # one token every 10 s
    for _ in range(6):
        limiter.take("k")
    assert limiter.take("k") == 10
    clock.now += 10
    assert limiter.take("k") == 0
    assert limiter.take("k") == 10


def test_buckets_are_independent_when_keys_differ():
    limiter = RateLimiter(1, clock=FakeClock())
    assert limiter.take("a") == 0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0


def test_bucket_memory_stays_bounded_when_many_keys_appear():
    clock = FakeClock()
    limiter = RateLimiter(10, clock=clock, max_keys=100)
    for i in range(1000):
        limiter.take(f"k{i}")
        clock.now += 10  # each bucket is full again by the time the next key arrives
    assert len(limiter._buckets) <= 101


def test_keyring_accepts_a_key_when_configured_only_by_its_sha256():
    hashed = "sha256:" + hashlib.sha256(b"the-real-key").hexdigest()
    ring = KeyRing([hashed])
    assert ring.authenticate("the-real-key") is not None
    assert ring.authenticate(hashed) is None


def test_settings_refuse_a_hashed_key_when_it_is_malformed():
    with pytest.raises(ValidationError, match="64 hex digits"):
        ServiceSettings(api_keys="sha256:abc")
