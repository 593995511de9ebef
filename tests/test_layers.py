"""The house rules that a reader relies on: lower layers never import higher ones."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "core" / "airlock"
LAYERS = {
    "errors": 0,
    "events": 0,
    "cbuild": 0,  # compiles our own C helpers (gateway row path, egress relay)
    "lazy": 0,  # a package's names imported from its modules on first use (PEP 562)
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
    "ci": 1,  # CI platform facts (identity, environment, runner files): errors/events/policy
    "jobs": 2,
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


_CLI_MODULE = re.compile(r"\bairlock\._(cli|commands)\b")


def _lazy_imports(path: Path) -> set[str]:
    """Modules named in strings, as `python -m airlock._cli` argv or importlib calls would:
    any string but a docstring that names the CLI's modules, alone or within a command line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and _CLI_MODULE.search(node.value)
    }


def test_the_reentry_check_sees_argv_strings(tmp_path: Path) -> None:
    """The check above finds a spawned CLI, whole or split, and leaves docstrings alone."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        '"""Unlike airlock._cli, this module..."""\n'
        'A = [sys.executable, "-m", "airlock._cli", "run"]\n'
        'B = "python -m airlock._commands.ci follow"\n'
    )
    assert _lazy_imports(sample) == {"airlock._cli", "python -m airlock._commands.ci follow"}


def test_the_ci_entry_points_do_not_reenter_the_cli() -> None:
    """`airlock ci session start` spawns the jobs recorder, not `python -m airlock._cli run`;
    the action's steps call jobs (run, credentials), not the CLI in-process."""
    for name in ("bracket.py", "action.py"):
        path = PACKAGE / "_commands" / "ci" / name
        assert _lazy_imports(path) == set(), name
        assert not {m for m in _imports(path) if m.startswith("airlock._cli")}, name
        assert "airlock._cli" not in path.read_text(encoding="utf-8"), name
