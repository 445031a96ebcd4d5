"""A real Prometheus (the Debian package's /usr/bin/prometheus) with a generated scrape config.

We start the binary ourselves instead of relying on the package's system service: each test session
gets its own port, its own throwaway TSDB folder and a 1s scrape interval, so analysis queries see
fresh data within seconds.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backtest_devtools import processes
from backtest_devtools.config import Settings
from backtest_devtools.errors import ClusterError

INSTALL_HINT = "install it with `make deps-system` (apt-get install prometheus)"


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: static targets ("127.0.0.1:8000") and labels added to every series."""

    name: str
    targets: tuple[str, ...]
    metrics_path: str = "/metrics"
    labels: dict[str, str] = field(default_factory=dict)


def scrape_config(
    jobs: list[ScrapeJob], interval: str = "1s", extra: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The prometheus.yml for `jobs` (plus `extra` raw scrape configs, e.g. a PodMonitor's service
    discovery); the evaluation interval follows the scrape interval."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            *(extra or []),
            *(
                {
                    "job_name": job.name,
                    "metrics_path": job.metrics_path,
                    "static_configs": [{"targets": list(job.targets), "labels": dict(job.labels)}],
                }
                for job in jobs
            ),
        ],
    }


class PrometheusServer:
    """One Prometheus process whose config, data and log live in `workdir`."""

    def __init__(
        self,
        settings: Settings,
        workdir: Path,
        jobs: list[ScrapeJob],
        interval: str = "1s",
        die_with_parent: bool = True,
        extra_scrape_configs: list[dict[str, Any]] | None = None,
        host: str = "127.0.0.1",
        binary: Path | None = None,
    ) -> None:
        """host: the listen address; pods reach the host only on the real node's address, not loopback.
        binary: another Prometheus than Debian's (the real tier's, built with Kubernetes discovery)."""
        self.settings = settings
        self.workdir = workdir.resolve()
        self.jobs = list(jobs)
        self.extra_scrape_configs = list(extra_scrape_configs or [])
        self.interval = interval
        self.die_with_parent = die_with_parent
        self.host = host
        self.binary = str(binary) if binary else settings.prometheus
        self.port = _free_port(host)
        self.url = f"http://{host}:{self.port}"
        self._managed: processes.Managed | None = None

    @property
    def config_file(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        if self.binary is None:
            raise ClusterError("prometheus", f"the prometheus binary is not on PATH; {INSTALL_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._managed = processes.start(
            "prometheus",
            [
                self.binary,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2h",
                "--log.level=warn",
            ],
            run_dir=self.workdir,
            log_dir=self.workdir,
            owner_mark=str(self.workdir),
            die_with_parent=self.die_with_parent,
        )
        managed = self._managed
        ready = processes.wait_until(lambda: self._get("/-/ready")[0] == 200 or not managed.is_running(), timeout)
        if not managed.is_running():
            raise ClusterError("prometheus", "exited before becoming ready", managed.log)
        if not ready:
            raise ClusterError("prometheus", f"not ready after {timeout:.0f}s at {self.url}", managed.log)
        return self

    def stop(self) -> None:
        if self._managed is not None:
            processes.stop(self._managed)

    def rss_bytes(self) -> int:
        return self._managed.rss_bytes() if self._managed is not None else 0

    def set_jobs(self, jobs: list[ScrapeJob]) -> None:
        """Replace the scrape jobs of a running server (config rewrite + /-/reload, no restart)."""
        self.jobs = list(jobs)
        self._write_config()
        status, body = self._request("POST", "/-/reload")
        if status != 200:
            raise ClusterError("prometheus", f"reload answered {status}: {body}", self.log)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns the `result` vector (empty when there is no data)."""
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if status != 200:
            raise ClusterError("prometheus", f"query {promql!r} answered {status}: {body}", self.log)
        result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
        return result

    def targets_up(self) -> dict[str, bool]:
        """Health of each active target by scrape URL, as Prometheus itself sees it."""
        status, body = self._get("/api/v1/targets?state=active")
        if status != 200:
            return {}
        active = json.loads(body)["data"]["activeTargets"]
        return {target["scrapeUrl"]: target["health"] == "up" for target in active}

    def wait_for_targets(self, timeout: float = 20.0) -> None:
        """Block until every configured target has been scraped successfully at least once."""
        expected = sum(len(job.targets) for job in self.jobs)

        def all_up() -> bool:
            health = self.targets_up()
            return len(health) >= expected and all(health.values())

        if not processes.wait_until(all_up, timeout, 0.25):
            raise ClusterError("prometheus", f"targets not up after {timeout:.0f}s: {self.targets_up()}", self.log)

    def wait_for_scrape_after(self, moment: float, timeout: float = 30.0) -> None:
        """Block until every target has been scraped at or after the Unix time ``moment``, so a query
        sees whatever the targets counted before it (instead of sleeping "a couple of scrape intervals")."""

        def scraped() -> bool:
            result = self.query("min(timestamp(up))")
            return bool(result) and float(result[0]["value"][1]) >= moment

        if not processes.wait_until(scraped, timeout, 0.2):
            raise ClusterError(
                "prometheus", f"no scrape of every target after {moment:.1f} within {timeout:.0f}s", self.log
            )

    def _write_config(self) -> None:
        config = scrape_config(self.jobs, self.interval, self.extra_scrape_configs)
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def _get(self, path: str) -> tuple[int, str]:
        return self._request("GET", path)

    def _request(self, method: str, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as error:
            return 0, str(error)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_sample(server: PrometheusServer, promql: str, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Poll a query until it returns data, for callers that just started a target."""
    deadline = time.monotonic() + timeout
    while True:
        result = server.query(promql)
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(0.25)
