"""Operator configuration, read once at start from the environment (``OPERATOR_*``), with safe defaults."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPERATOR_", extra="ignore")

    namespace: str | None = None
    """Watch only this namespace; all namespaces when unset (the chart's ClusterRole allows either)."""
    router_image: str = "backtest-engine:0.1.0"
    """Image of the bundled router, unless a BacktestService names its own."""
    metrics_port: int = Field(default=8081, ge=0, le=65535)
    """Port of the operator's own Prometheus endpoint (0 disables it)."""
    metrics_host: str = "0.0.0.0"
    """Listen address of the metrics endpoint (a pod must be reachable by Prometheus)."""
    max_analysis_concurrency: int = Field(default=20, ge=1)
    """Evaluations running at once across all BacktestServices (bounds the load on Prometheus)."""
