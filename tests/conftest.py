"""Shared fixtures: the real control plane, namespaces, the CRD and Prometheus (see backtest_devtools)."""

pytest_plugins = ["backtest_devtools.fixtures", "backtest_devtools.realfixtures"]
