"""Developer tooling: a real local Kubernetes control plane and Prometheus for tests and the demo.

Nothing here is shipped with the operator; it exists so that tests and `make demo` run against real
servers (kube-apiserver, etcd, controllers, kwok fake nodes, Prometheus) instead of mocks.
"""

from backtest_devtools.errors import ClusterError, DevtoolsError

__all__ = ["ClusterError", "DevtoolsError"]
