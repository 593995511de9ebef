"""Every place a user installs Airlock names our own distribution, `airlock-ci`: `airlock` on the
package index is an unrelated project, and so are many `airlock-*` names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

import airlock

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
# a requirement that starts with our import name: airlock, airlock[..], airlock==.., airlock-x..
_SPEC = re.compile(
    r"""(?<![\w/.@&*$-])['"]?(airlock(?:-[a-z]+)?)(\[[a-z,]+\])?((?:==|>=|~=)[\w.]+)?"""
)
_INSTALL = re.compile(
    r"pip3?\s+install\b[^\n]*|(?<![\w.-])install:\s*[^\n]*|default:\s*airlock[^\n]*"
)
_SCANNED = ("*.md", "*.yml", "*.yaml", "Dockerfile", "*.service", "*.sh", "*.txt", "*.toml")


def _files() -> list[Path]:
    skip = {".git", ".venv", "node_modules", "tests"}
    found = []
    for pattern in _SCANNED:
        for path in ROOT.rglob(pattern):
            if not skip & set(path.relative_to(ROOT).parts):
                found.append(path)
    return sorted(found)


def _install_specs() -> list[tuple[str, str, str | None]]:
    specs = []
    for path in _files():
        for line in _INSTALL.findall(path.read_text(errors="replace")):
            for name, _extras, pin in _SPEC.findall(line):
                specs.append((f"{path.relative_to(ROOT)}: {line.strip()}", name, pin or None))
    return specs


def test_the_distribution_is_airlock_ci_and_the_version_is_one() -> None:
    assert PYPROJECT["project"]["name"] == "airlock-ci"
    assert PYPROJECT["project"]["scripts"] == {"airlock": "airlock._cli:main"}
    assert airlock.__version__ == VERSION
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        assert not [r for r in extra if r.startswith("airlock[")]


def test_every_install_spec_names_airlock_ci() -> None:
    specs = _install_specs()
    assert len(specs) >= 5, specs  # README, docs, templates, examples, images
    wrong = [where for where, name, _ in specs if name != "airlock-ci"]
    assert wrong == []
    stale = [where for where, _, pin in specs if pin is not None and pin[2:] != VERSION]
    assert stale == []


def test_the_gitlab_template_installs_this_version_by_default() -> None:
    text = (ROOT / "gitlab-templates" / "airlock.yml").read_text()
    spec = next(yaml.safe_load_all(text))["spec"]["inputs"]["install"]["default"]
    assert re.fullmatch(rf"airlock-ci\[[a-z,]+\]=={re.escape(VERSION)}", spec)


def test_the_spec_pattern_catches_the_wrong_names() -> None:
    line = "pip install 'airlock[all]' airlock==0.1 airlock-agent airlock-ci[fast]==1"
    assert [m[0] for m in _SPEC.findall(line)] == [
        "airlock",
        "airlock",
        "airlock-agent",
        "airlock-ci",
    ]


def test_the_images_pin_their_base_and_install_from_the_checkout() -> None:
    for dockerfile in (
        ROOT / "images" / "job" / "Dockerfile",
        ROOT / "examples" / "deploy" / "Dockerfile",
    ):
        text = dockerfile.read_text()
        (base,) = re.findall(r"^FROM (\S+)", text, flags=re.M)
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
        assert re.search(r'pip install [^\n]*"/src\[[a-z,]+\]"', text)
