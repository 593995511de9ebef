"""Which resolved addresses the proxy refuses to connect to (sans-I/O).

An allowed name (``*.example.com``) can be made to resolve anywhere: DNS rebinding. Only
globally reachable unicast addresses are connected to, unless the deciding rule says
``local_addresses: true``. Refused: loopback, RFC 1918, CGNAT 100.64/10, link-local, ULA
fc00::/7, unspecified / ``0.0.0.0/8``, multicast, reserved and documentation ranges, the cloud
metadata services, and every IPv6 form that carries an IPv4 address (IPv4-mapped,
IPv4-compatible, SIIT, 6to4, Teredo, NAT64 ``64:ff9b::/96``) whose IPv4 address is refused.
Python's ``is_global`` is the base; its gaps (multicast counts as global, and so do
``64:ff9b:1::/48``, ``fec0::/10`` and the embedded forms) are closed here.
"""

from __future__ import annotations

import ipaddress

__all__ = ["Address", "parse_address", "refused_reason"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services outside the ranges above would be global: Azure's WireServer.
# (169.254.169.254 is link-local, fd00:ec2::/112 ULA, Alibaba's 100.100.100.200 CGNAT; all
# listed so the reason names them.)
_METADATA = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.169.254/32", "fd00:ec2::/112", "100.100.100.200/32", "168.63.129.16/32")
)
# IPv6 ranges that are not global whatever Python's table says.
_V6_NOT_GLOBAL = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # IPv4-compatible (deprecated), also :: and ::1
        "::ffff:0:0:0/96",  # SIIT IPv4-translated
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "fec0::/10",  # site-local (deprecated)
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def parse_address(text: str) -> Address | None:
    """An IP address from a resolver answer or a host (zone index dropped); ``None`` if not one.
    An IPv4-mapped IPv6 address is answered as its IPv4 address."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _embedded(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (and a router may deliver to)."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    last32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64 or any(address in n for n in _V6_NOT_GLOBAL[:2]):
        found.append(last32)
    return found


def refused_reason(address: Address) -> str | None:
    """Why the proxy refuses ``address`` without ``local_addresses: true``; ``None``: global."""
    if any(address in network for network in _METADATA):
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded(address):
            reason = refused_reason(inner)
            if reason is not None:
                return f"an IPv6 form of {inner}, {reason}"
        if any(address in network for network in _V6_NOT_GLOBAL):
            return "a non-global address"
    if address.is_private:
        return "a private or reserved address"
    if not address.is_global:
        return "a non-global address"  # CGNAT 100.64/10 and the like
    return None
