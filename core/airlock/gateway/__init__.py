"""Gateways that hold credentials, record every request and mask what comes back.

``airlock.gateway.postgres``: the PostgreSQL wire-protocol gateway. ``airlock.gateway.tickets``:
the session tickets clients present instead of the upstream credential. See docs/gateways.md.
"""

__all__: list[str] = []
