"""HTTP/1.1 for the gateways without a framework: a lean server for their ASGI apps
(``server.py``) and a keep-alive client for the HTTP gateway's upstream (``client.py``), both
parsing with httptools (llhttp)."""

from __future__ import annotations

from airlock.errors import UsageError

try:
    import httptools  # noqa: F401
except ModuleNotFoundError as exc:  # a clear error, never a traceback, names what to install
    if exc.name != "httptools":
        raise
    raise UsageError(
        "the gateways need the Python package 'httptools', which is not installed",
        hint="reinstall airlock-ci (httptools is one of its dependencies), or "
        "pip install httptools in the environment that runs airlock",
    ) from None

__all__: list[str] = []
