"""Names a package exports, imported from its modules on first use (PEP 562).

``airlock run`` without gateways or a sandbox must not pay for importing them (pydantic, the
policy models, the sandbox runtime): a package lists where each of its names lives, and this
module gives it the ``__getattr__`` and ``__dir__`` that import the module the first time a
name is looked up.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, where: Mapping[str, str], names: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``where`` maps each exported name to the
    submodule that defines it; ``names`` is the package's ``__all__``."""

    def get(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        vars(sys.modules[package])[name] = value  # later look-ups skip this function
        return value

    def listing() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return get, listing
