"""PromQL for the checks, as docs/metrics-contract.md defines them; label values are always quoted and escaped.

Templates take ``{selector}`` (label matchers, without braces), ``{window}`` (a PromQL range such as
``30s``), ``{track}``, ``{revision}`` and ``{objective}`` (the ``le`` bucket of the latency objective).
With the router, the selector picks one BacktestService's router series and ``track`` a track; without it
(``replicas``, ``gatewayAPI``) the engine's own series are read, and the selector carries
``version="<revision>"``: the engine labels every series with the revision it runs (ENGINE_VERSION). The
spec may override each template (``spec.analysis.queries``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from backtest_operator.api import AnalysisSettings

DEFAULT_TEMPLATES = {
    "requests": 'sum(increase(backtest_router_requests_total{{{selector}track="{track}"}}[{window}]))',
    "errors": (
        'sum(increase(backtest_router_requests_total{{{selector}track="{track}",code=~"5..|transport"}}[{window}]))'
    ),
    "fallbacks": "sum(increase(backtest_router_fallbacks_total{{{selector_only}}}[{window}]))",
    "fast": (
        "sum(increase(backtest_router_request_duration_seconds_bucket"
        '{{{selector}track="{track}",le=~"{objective}"}}[{window}]))'
    ),
    "latency_p95": (
        "histogram_quantile(0.95, sum by (le) (rate(backtest_router_request_duration_seconds_bucket"
        '{{{selector}track="{track}"}}[{window}])))'
    ),
    "latency_buckets": (
        'sum by (le) (increase(backtest_router_request_duration_seconds_bucket{{{selector}track="{track}"}}[{window}]))'
    ),
}


_API = 'route=~"/api/.*",route!~"/api/v1/(health|ready)"'
"""Client requests only: kubelet probes and Prometheus scrapes are not traffic to judge."""
ENGINE_TEMPLATES = {
    "requests": f"sum(increase(backtest_engine_http_requests_total{{{{{{selector}}{_API}}}}}[{{window}}]))",
    "errors": (f'sum(increase(backtest_engine_http_requests_total{{{{{{selector}}{_API},code=~"5.."}}}}[{{window}}]))'),
    "fallbacks": "sum(vector(0))",
    "fast": (
        "sum(increase(backtest_engine_http_request_duration_seconds_bucket"
        f'{{{{{{selector}}{_API},le=~"{{objective}}"}}}}[{{window}}]))'
    ),
    "latency_p95": (
        "histogram_quantile(0.95, sum by (le) (rate(backtest_engine_http_request_duration_seconds_bucket"
        f"{{{{{{selector}}{_API}}}}}[{{window}}])))"
    ),
    "latency_buckets": (
        f"sum by (le) (increase(backtest_engine_http_request_duration_seconds_bucket{{{{{{selector}}{_API}}}}}"
        "[{window}]))"
    ),
}
"""Revision-keyed defaults over the engine's series, for rollouts without the router (there are no
fallbacks without a router, so that count is zero)."""


SHADOW_OUTCOMES = "sum by (outcome) (increase(backtest_router_shadow_comparisons_total{{{selector}}}[{window}]))"
"""Shadow comparisons by outcome (match, mismatch, error, skipped) over a window; router only."""
SHADOW_FIELDS = (
    "sum by (field) (backtest_router_shadow_mismatches_total{{{selector}}} "
    "- backtest_router_shadow_mismatches_total{{{selector}}} offset {window} "
    "or backtest_router_shadow_mismatches_total{{{selector}}})"
)
"""Mismatching comparisons by result field over a window; router only. A field's series is born with its
first mismatch, which ``increase()`` cannot see (it needs two samples), so this is the counter now minus
the counter a window ago, or the whole counter for a field first seen within the window."""


def shadow_queries(labels: Mapping[str, str], window: timedelta) -> tuple[str, str]:
    """The shadow series of one BacktestService's routers over ``window``: (by outcome, by field)."""
    values = {"selector": selector(labels), "window": promql_range(window)}
    return SHADOW_OUTCOMES.format(**values), SHADOW_FIELDS.format(**values)


def quote_label_value(value: str) -> str:
    """A PromQL double-quoted string literal: backslash, quote and newline escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def selector(labels: Mapping[str, str]) -> str:
    """Label matchers joined by commas, e.g. ``namespace="prod",service="quant-router"``."""
    return ",".join(f"{name}={quote_label_value(value)}" for name, value in sorted(labels.items()))


def promql_range(window: timedelta) -> str:
    """A PromQL range literal; whole seconds, at least 1s."""
    return f"{max(1, round(window.total_seconds()))}s"


def bucket_matcher(objective: timedelta) -> str:
    """Regex for the ``le`` label of the objective's bucket, whichever way the client printed the float."""
    seconds = objective.total_seconds()
    text = f"{seconds:g}"
    forms = {text, f"{seconds:.1f}"} if float(text).is_integer() else {text}
    return "|".join(sorted(form.replace(".", "\\\\.") for form in forms))


MAX_POINTS = 10_000
"""Points per series a range query may ask for: Prometheus refuses more than 11,000 ("exceeded maximum
resolution"), which would turn a long pause or hold into analysis errors and a rollback."""


def grid_stride(intervals: int) -> int:
    """How many analysis intervals one range-query step spans, so that ``intervals`` fit ``MAX_POINTS``."""
    return max(1, -(-intervals // MAX_POINTS))


@dataclass(frozen=True)
class QuerySet:
    """The queries of one evaluation window for one track."""

    requests: str
    errors: str
    fallbacks: str
    fast: str
    latency_p95: str
    latency_buckets: str


def build_queries(
    analysis: AnalysisSettings,
    labels: Mapping[str, str],
    track: str,
    window: timedelta,
    *,
    revision: str | None = None,
) -> QuerySet:
    """The queries of one track; with ``revision`` the engine's series of that revision (no router)."""
    templates = dict(DEFAULT_TEMPLATES if revision is None else ENGINE_TEMPLATES)
    for name, template in analysis.queries.model_dump().items():
        if template:
            templates[name] = template
    keyed = dict(labels) if revision is None else {**labels, "version": revision}
    matchers = selector(keyed)
    values = {
        "selector": f"{matchers}," if matchers else "",
        "selector_only": matchers,
        "track": track.replace('"', ""),
        "revision": (revision or "").replace('"', ""),
        "window": promql_range(window),
        "objective": bucket_matcher(analysis.latency_objective),
    }
    return QuerySet(**{name: template.format(**values) for name, template in templates.items()})
