"""The BacktestService resource as a whole: identity constants and the manifest model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from backtest_operator.api.base import ApiModel
from backtest_operator.api.spec import BacktestServiceSpec
from backtest_operator.api.status import BacktestServiceStatus
from backtest_operator.names import API_VERSION, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION

__all__ = ["API_VERSION", "GROUP", "KIND", "PLURAL", "SHORT_NAMES", "SINGULAR", "VERSION", "BacktestService"]


class BacktestService(ApiModel):
    """A whole manifest, as read from a file (the simulator) or from the API server."""

    api_version: Literal["backtest.dev/v1alpha1"] = Field(default="backtest.dev/v1alpha1", alias="apiVersion")
    kind: Literal["BacktestService"] = "BacktestService"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: BacktestServiceSpec
    status: BacktestServiceStatus | None = None
