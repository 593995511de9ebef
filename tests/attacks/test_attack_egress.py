"""Attacks on the egress proxy that the earlier reviews did not name, over real sockets.

DNS rebinding: a name the policy allows can be made to resolve to any address. Loopback and
link-local answers are refused (``airlock.local-address``), but the cloud metadata services
also live elsewhere: AWS's IPv6 IMDS at ``fd00:ec2::254``, Alibaba's at ``100.100.100.200``,
Azure's WireServer at ``168.63.129.16`` (every GitHub-hosted runner is an Azure VM). The proxy
must refuse them by rule, not by the luck of a missing route.

The proxy and its client run in a network namespace of their own (bubblewrap, loopback only),
so that even a proxy that fails this test connects nowhere but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

METADATA = {
    "imds6.test": "fd00:ec2::254",
    "alibaba.test": "100.100.100.200",
    "wireserver.test": "168.63.129.16",
}

_SCENARIO = textwrap.dedent(
    """
    import json, socket, sys
    from airlock.egress import start_egress_proxy
    from airlock.policy import parse_policy

    name, address = sys.argv[1], sys.argv[2]
    events = []

    async def rebinding(host, port):  # the attacker's DNS for the allowed name
        return [address]

    policy = parse_policy(f"network:\\n  allow:\\n    - {{id: rebind, host: {name}, ports: [80]}}\\n")
    proxy = start_egress_proxy(
        policy.network, record=lambda kind, data: events.append(dict(data)), approve=None,
        resolve=rebinding,
    )
    with socket.create_connection((proxy.host, proxy.port), timeout=30) as sock:
        sock.sendall(f"GET http://{name}/latest/meta-data/ HTTP/1.1\\r\\nHost: {name}\\r\\n\\r\\n".encode())
        answer = sock.recv(4096)
    proxy.close()
    print(json.dumps({"answer": answer.decode("latin-1"), "events": events}))
    """
)


@pytest.mark.parametrize("name", sorted(METADATA))
def test_an_allowed_name_resolving_to_a_metadata_service_is_refused(name: str) -> None:
    isolated = ["bwrap", "--dev-bind", "/", "/", "--unshare-net", "--unshare-user", "--"]
    result = subprocess.run(
        [*isolated, sys.executable, "-c", _SCENARIO, name, METADATA[name]],
        env=dict(os.environ), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    [event] = seen["events"]
    assert seen["answer"].startswith("HTTP/1.1 403"), seen
    assert event["rule_id"] == "airlock.local-address", event
    assert "address" not in event  # never connected
