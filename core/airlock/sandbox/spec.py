"""Compile the policy's ``sandbox:`` section, with what this session knows (workspace, home,
Airlock's own state), into a :class:`SandboxSpec`: absolute paths, nothing left to decide.

Refused here (exit 80, nothing started): a ``read_write`` or ``read_only`` path inside Airlock's
state, a ``read_write`` path that holds it, ``/`` as a writable path.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from airlock.errors import ConfigError

if TYPE_CHECKING:  # a run without a policy file never loads the models (policy.default)
    from airlock.policy import SandboxPolicy

__all__ = ["ALWAYS_HIDDEN", "BASE_ENV", "SandboxSpec", "compile_spec", "protected_paths"]

# Root-owned secrets under the read-only system binds. Inside the sandbox the agent's uid maps to
# the uid that runs Airlock (root on many runners), so file modes do not protect these: they are
# covered by mounts.
ALWAYS_HIDDEN = (
    "/etc/shadow",
    "/etc/shadow-",
    "/etc/gshadow",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/etc/ssl/private",
    "/etc/security/opasswd",
    # Credentials of the runner, the machine and what it hosts, at their standard places:
    "/etc/gitlab-runner",  # GitLab Runner's config.toml: runner and registration tokens
    "/opt/actions-runner/.credentials",  # a self-hosted GitHub runner's identity
    "/opt/actions-runner/.credentials_rsaparams",  # ... and its private key
    "/opt/actions-runner/.runner",
    "/etc/kubernetes",  # admin.conf, kubelet.conf, pki/*.key on a cluster node
    "/etc/rancher",  # k3s.yaml / rke2.yaml: cluster-admin kubeconfigs
    "/etc/credstore",  # systemd system credentials
    "/etc/credstore.encrypted",
    "/etc/krb5.keytab",  # the host's Kerberos keys
    "/etc/mysql/debian.cnf",  # MySQL's maintenance password
    "/etc/gitlab",  # Omnibus GitLab's gitlab-secrets.json
    "/etc/letsencrypt",  # certbot's private keys
    "/etc/wireguard",
    "/etc/NetworkManager/system-connections",
    "/etc/pki/tls/private",
    "/etc/ipsec.secrets",
    "/etc/ppp/chap-secrets",
    "/etc/ppp/pap-secrets",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd",
    "/run/podman",
    "/run/user",
)
# Always passed in (when set), besides the policy's `env` and the gateway variables.
BASE_ENV = ("PATH", "TERM", "LANG", "LANGUAGE", "LC_*", "TZ", "COLORTERM", "NO_COLOR", "CI")
# Runner directories that hold the job's tokens and file commands.
_RUNNER_DIR_VARS = ("RUNNER_TEMP", "RUNNER_TOOL_CACHE_TOKENS")
_RUNNER_FILE_VARS = ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_STATE", "GITHUB_PATH")


@dataclass(frozen=True)
class SandboxSpec:
    """Everything bwrap needs besides the command: host paths, all absolute."""

    mode: str  # required | best_effort
    workspace: str
    home: str
    read_write: tuple[str, ...]
    read_only: tuple[str, ...]
    home_files: tuple[str, ...]
    hidden: tuple[str, ...]  # covered last, so no bind can reveal them
    env_pass: tuple[str, ...]
    pinned: tuple[str, ...] = ()  # files in a writable bind kept read-only (the policy file)
    uid: int = 1000
    gid: int = 1000


def protected_paths(
    *, sessions_dir: Path, key_path: Path | None, state_dir: Path | None, home: str
) -> tuple[str, ...]:
    """Airlock's own state: what the agent must never read or write."""
    paths = [sessions_dir, Path(home) / ".config" / "airlock"]
    if key_path is not None:
        paths.append(key_path)
        if key_path.parent.name == "airlock":  # the default key's own directory
            paths.append(key_path.parent)
    if state_dir is not None:
        paths.append(state_dir)
    return tuple(dict.fromkeys(_abs(p) for p in paths))


def compile_spec(
    policy: SandboxPolicy,
    *,
    mode: str,
    workspace: str,
    home: str,
    protected: Iterable[str],
    environ: Mapping[str, str],
    pinned: Iterable[str] = (),
) -> SandboxSpec:
    """The session's sandbox, or :class:`ConfigError` naming the path to change."""
    fs = policy.filesystem
    protected = tuple(protected)
    read_write = tuple(_absolute(p, home) for p in fs.read_write)
    read_only = tuple(_absolute(p, home) for p in fs.read_only)
    for path in read_write:
        _refuse_overlap(path, protected, "read_write", writable=True)
    for path in read_only:
        _refuse_overlap(path, protected, "read_only", writable=False)
    workspace = _abs(workspace)
    _refuse_workspace(workspace, _abs(home))
    writable = (workspace, *read_write)
    read_only += tuple(p for p in _own_install() if any(_inside(p, w) for w in writable))
    hidden = (
        *ALWAYS_HIDDEN,
        *protected,
        *_runner_paths(environ),
        *(_absolute(p, home) for p in fs.hidden),
    )
    return SandboxSpec(
        mode=mode,
        workspace=workspace,
        home=_abs(home),
        read_write=read_write,
        read_only=read_only,
        home_files=tuple(_absolute(p, home) for p in policy.home_files),
        hidden=tuple(dict.fromkeys(hidden)),
        env_pass=(*BASE_ENV, *policy.env),
        pinned=tuple(dict.fromkeys(_abs(p) for p in pinned)),
    )


def _absolute(path: str, home: str) -> str:
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    return os.path.normpath(path)


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _refuse_overlap(path: str, protected: tuple[str, ...], key: str, *, writable: bool) -> None:
    if writable and path == "/":
        raise ConfigError(
            "sandbox.filesystem.read_write: '/' would make the whole machine writable",
            hint="list the directories the agent must write (the workspace is always writable)",
        )
    for state in protected:
        if _inside(path, state) or (writable and _inside(state, path)):
            raise ConfigError(
                f"sandbox.filesystem.{key}: '{path}' would expose Airlock's own state ({state})",
                hint="remove it from the policy, or move --sessions / --key / the state dir",
            )


def _refuse_workspace(workspace: str, home: str) -> None:
    """The workspace is bound read-write over the fresh $HOME: one that holds $HOME (or is
    ``/``) would hand the agent the real one (shell profiles, ~/.ssh, tokens in dotfiles)."""
    if _inside(home, workspace):
        raise ConfigError(
            f"the workspace {workspace} holds $HOME ({home}): the agent would read and write "
            "your real home directory (shell profiles, ~/.ssh, tokens in dotfiles)",
            hint="run `airlock run` from the project's directory",
        )


def _own_install() -> tuple[str, ...]:
    """Airlock's own code and the environment it runs from: read-only inside, even where a
    writable bind holds them (a project's .venv), or the agent could rewrite what runs next
    outside the sandbox."""
    import airlock

    return tuple(dict.fromkeys((_abs(Path(airlock.__file__).parent), _abs(sys.prefix))))


def _runner_paths(environ: Mapping[str, str]) -> list[str]:
    paths = [environ[name] for name in _RUNNER_DIR_VARS if environ.get(name)]
    files = [environ[name] for name in _RUNNER_FILE_VARS if environ.get(name)]
    paths += files + [str(Path(f).parent) for f in files]
    project = environ.get("CI_PROJECT_DIR")
    if project:  # GitLab keeps file variables and the job's scripts next to the checkout
        paths.append(project.rstrip("/") + ".tmp")
    return [_abs(p) for p in paths if p.startswith("/")]


def _abs(path: str | Path) -> str:
    """Absolute and normalised, without resolving symlinks (bwrap sees the path as written)."""
    return os.path.normpath(Path(path).absolute())
