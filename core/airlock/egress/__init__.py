"""The egress proxy: the agent's only way out to the network (docs/egress.md).

An HTTP CONNECT and plain-HTTP forward proxy on 127.0.0.1 that judges every attempt against the
policy's ``network:`` section (default deny), resolves names itself, checks that a tunnel's TLS
SNI is the host asked for (TLS is never intercepted), and records each attempt as one
``net.connect`` event.

    proxy = start_egress_proxy(policy.network, record=record, approve=approve)
    proxy.host, proxy.port
    proxy.close()
"""

from airlock.egress.agent import proxy_environment
from airlock.egress.proxy import EgressProxy, EgressProxyError, start_egress_proxy

__all__ = ["EgressProxy", "EgressProxyError", "proxy_environment", "start_egress_proxy"]
