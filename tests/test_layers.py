"""The house rules that a reader relies on: lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "core" / "airlock"
LAYERS = {
    "errors": 0,
    "events": 0,
    "audit": 0,
    "policy": 1,
    "mask": 1,
    "capture": 1,
    "oidc": 1,
    "providers": 1,
    "archive": 1,
    "gateway": 1,
    "egress": 1,
    "sandbox": 1,
    "gate": 1,
    "brokerclient": 1,
    "jobs": 2,
    "ci": 3,
    "broker": 3,
    "_commands": 3,
    "_cli": 3,
}


def _domain(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "airlock" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_lower_layers_never_import_higher_ones() -> None:
    violations = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        own = rel.parts[0].removesuffix(".py")
        if own not in LAYERS:
            continue
        for module in _imports(path):
            target = _domain(module)
            if target in LAYERS and LAYERS[target] > LAYERS[own]:
                violations.append(f"{rel} imports {module}")
    assert violations == []


def test_every_package_has_a_layer() -> None:
    names = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if not p.name.startswith(".")}
    unknown = names - set(LAYERS) - {"__init__", "__pycache__", "py.typed"}
    assert unknown == set(), f"add {sorted(unknown)} to LAYERS (and to docs/architecture.md)"


def test_library_code_never_reenters_the_cli() -> None:
    """Only the CLI's own modules may import it: orchestration calls the domains directly."""
    reentries = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("_cli.py", "_commands"):
            continue
        for module in _imports(path) | _lazy_imports(path):
            if module.startswith(("airlock._cli", "airlock._commands")):
                reentries.append(f"{rel} imports {module}")
    assert reentries == []


def _lazy_imports(path: Path) -> set[str]:
    """Modules named in strings, as `python -m airlock._cli` argv or importlib calls would."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(("airlock._cli", "airlock._commands"))
    }
