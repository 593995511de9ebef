"""What the agent is told about the egress proxy: the standard proxy variables."""

from __future__ import annotations

from collections.abc import Iterable

from airlock.egress.proxy import EgressProxy

__all__ = ["proxy_environment"]


def proxy_environment(proxy: EgressProxy, direct_hosts: Iterable[str]) -> dict[str, str]:
    """``HTTPS_PROXY``/``HTTP_PROXY`` pointing at ``proxy`` (both spellings: curl reads only
    the lower-case ``http_proxy``) and ``NO_PROXY`` = ``direct_hosts`` (the gateways' hosts,
    which the agent reaches without the proxy). ``ALL_PROXY`` is cleared."""
    no_proxy = ",".join(dict.fromkeys(h for h in direct_hosts if h)) or "127.0.0.1"
    env = {"ALL_PROXY": "", "all_proxy": ""}
    for name in ("HTTPS_PROXY", "HTTP_PROXY"):
        env[name] = env[name.lower()] = proxy.url
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env
