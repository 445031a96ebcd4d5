"""The operator's exceptions; the edges turn them into kopf errors, HTTP problems or exit code 2."""

from __future__ import annotations


class BacktestOperatorError(Exception):
    """Base of every error this package raises on purpose."""


class InvalidSpec(BacktestOperatorError):
    """A BacktestService (or a manifest file) that cannot be acted on; the message names the field."""


class InvalidRecording(BacktestOperatorError):
    """Recorded metrics (CSV or Prometheus) that cannot be replayed; the message names the line or field."""


class AnalysisError(BacktestOperatorError):
    """Measurements could not be taken (Prometheus unreachable, query rejected, malformed answer)."""
