"""Manual controls that GitOps can drive: annotations whose value is a request token.

``kubectl backtest promote`` (and a GitOps pipeline alike) sets ``backtest.dev/promote`` to a fresh token;
the policy acts on a token it has not handled before and records it in ``status.handledControls``, so a
request is acted on exactly once however often the object is reconciled or re-synced. Pausing is a plain
spec field (``spec.paused``) because it is a state, not an event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from backtest_operator.api import HandledControls
from backtest_operator.names import CONTROL_ANNOTATIONS

ANNOTATIONS = CONTROL_ANNOTATIONS


@dataclass(frozen=True)
class Controls:
    """Request tokens as currently found on the object (None: never requested)."""

    promote: str | None = None
    promote_full: str | None = None
    abort: str | None = None
    retry: str | None = None

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str] | None) -> Controls:
        found = annotations or {}
        return cls(**{name: found.get(key) or None for name, key in ANNOTATIONS.items()})

    def pending(self, handled: HandledControls) -> frozenset[str]:
        """Names of requests whose token differs from the one already handled."""
        return frozenset(
            f.name
            for f in fields(self)
            if getattr(self, f.name) is not None and getattr(self, f.name) != getattr(handled, f.name)
        )

    def as_handled(self) -> HandledControls:
        return HandledControls(promote=self.promote, promote_full=self.promote_full, abort=self.abort, retry=self.retry)


NO_CONTROLS = Controls()
"""No request on the object."""
