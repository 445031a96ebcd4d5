"""`serve` as a real process: the contract flags, env settings, and exit 2 on bad settings."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import httpx

from backtest_devtools.stack import free_port
from backtest_engine.service.cli import add_serve_parser, run_serve


def test_serve_parser_mounts_with_run_serve_when_added_to_subparsers():
    parser = argparse.ArgumentParser(prog="backtest-engine")
    add_serve_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--host", "127.0.0.1", "--port", "9999"])
    assert args.func is run_serve and args.host == "127.0.0.1" and args.port == 9999


def test_serve_exits_2_naming_the_variable_when_a_setting_is_invalid(tmp_path):
    env = {**os.environ, "ENGINE_FAULT_ERROR_RATE": "1.5", "DATABASE_URL": f"sqlite:///{tmp_path}/r.db"}
    result = subprocess.run(
        [sys.executable, "-m", "backtest_engine.service", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "ENGINE_FAULT_ERROR_RATE" in result.stderr


def test_serve_answers_on_the_given_port_when_started_as_a_module(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "ENGINE_API_KEYS": "k1",
        "ENGINE_VERSION": "v-test",
        "ENGINE_TRACK": "stable",
        "DATABASE_URL": f"sqlite:///{tmp_path}/r.db",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "backtest_engine.service", "--host", "127.0.0.1", "--port", str(port)], env=env
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"{base}/api/v1/health", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert health.json()["version"] == "v-test" and health.json()["track"] == "stable"
        assert httpx.get(f"{base}/api/v1/strategies", headers={"X-API-Key": "k1"}).status_code == 200
        assert httpx.get(f"{base}/api/v1/strategies").status_code == 401
        assert 'track="stable",version="v-test"' in httpx.get(f"{base}/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=15)
