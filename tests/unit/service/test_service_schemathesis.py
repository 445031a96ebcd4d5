"""Property-based run of the whole OpenAPI document: generated requests (valid and invalid) never get a 5xx.

The app runs in-process (ASGI) on a throwaway SQLite file with fault injection off; examples per
operation are bounded so the run stays well under a minute on two cores.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from backtest_engine.service.app import create_app
from backtest_engine.service.settings import ServiceSettings
from tests.unit.service.conftest import AUTH, KEY

_DB = Path(tempfile.mkdtemp(prefix="schemathesis-")) / "results.db"
APP = create_app(ServiceSettings(api_keys=KEY, rate_limit=1_000_000, DATABASE_URL=f"sqlite:///{_DB}"))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_never_answers_5xx_when_given_generated_requests(case):
    response = case.call(headers=AUTH)
    assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])
