"""backtest-operator: progressive delivery of the backtest engine on Kubernetes.

The package is layered as DESIGN.md describes: pure models (``api``), policy and analysis; kopf handlers
and I/O at the edges.
"""

__version__ = "0.1.0"
