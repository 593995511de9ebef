#!/usr/bin/env bash
# Install Airlock into a private venv from this action's own checkout, cached, and print the path
# of its Python on stdout (everything else goes to stderr).
#
# Two cache layers under $AIRLOCK_CACHE_DIR (default: $RUNNER_TOOL_CACHE/airlock, which persists
# on self-hosted runners; else ~/.cache/airlock):
#   deps-<key>     the pinned dependencies (requirements.txt, --no-deps), keyed by the hash of
#                  pyproject.toml, requirements.txt and the Python version: the slow part,
#                  done by uv (AIRLOCK_INSTALLER=pip: by pip, as it is when uv fails)
#   venv-<key>     a hard-linked copy of deps-<key> plus this checkout's core/airlock, keyed by
#                  the deps key and the hash of the package source: instant to make
# Each layer is built under a temporary name and renamed into place, under flock, so concurrent
# jobs on one runner never see a half-built venv.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${AIRLOCK_PYTHON:-python3}"
cache="${AIRLOCK_CACHE_DIR:-${RUNNER_TOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}}/airlock}"
case "$cache" in /*) ;; *) cache="$PWD/$cache" ;; esac
case "$python" in /*) ;; */*) python="$PWD/$python" ;; esac
# The working directory is the checkout, which a pull request (and the agent, in an earlier
# step) fills: `python -m venv|pip|compileall` and `python -c 'import …'` would import a
# package of that name from it first. Nothing below needs it.
cd /
export PYTHONSAFEPATH=1

# Exec capture (strace, ptrace), the sandbox (bubblewrap) and the locking below are Linux's.
if [ "$(uname -s)" != Linux ]; then
  echo "airlock: error: Airlock's actions run on Linux runners only (this is $(uname -s)); use runs-on: ubuntu-latest or a Linux self-hosted runner" >&2
  exit 80
fi

# One interpreter start (it runs twice a job, main and post): the version check and the key.
if ! pyver="$("$python" -c 'import sys; v = sys.version_info; assert v >= (3, 11); print("%d.%d" % v[:2])' 2>/dev/null)"; then
  echo "airlock: error: $python is missing or older than 3.11; set the action's python input" >&2
  exit 80
fi

# sha256sum (GNU coreutils) where there is one; `shasum -a 256` (Perl) otherwise. Same output.
if command -v sha256sum >/dev/null 2>&1; then
  sha256=(sha256sum)
elif command -v shasum >/dev/null 2>&1; then
  sha256=(shasum -a 256)
else
  echo "airlock: error: neither sha256sum nor shasum is installed on this runner; install coreutils" >&2
  exit 80
fi
hash_of() { "${sha256[@]}" | cut -c1-20; }
deps_key="$({ echo "$pyver"; cat "$root/pyproject.toml" "$here/requirements.txt"; } | hash_of)"
src_key="$(cd "$root" && find core/airlock -type f ! -name '*.pyc' | LC_ALL=C sort | xargs "${sha256[@]}" | hash_of)"
deps="$cache/deps-$deps_key"
venv="$cache/venv-$deps_key-$src_key"
mkdir -p "$cache"

# uv installs the pinned list in one process with parallel downloads: about 4x faster than pip
# on a cold cache. Taken from PATH, else bootstrapped once (pinned) into the cache with pip.
# Whatever goes wrong on this path, pip does the install instead.
uv_version="0.13.9"

pip_setting() {  # pip's effective value of a setting: its PIP_* variable, else its config files
  local variable="PIP_$(printf '%s' "$1" | tr 'a-z-' 'A-Z_')"
  if [ -n "${!variable:-}" ]; then printf '%s' "${!variable}"; return; fi
  "$python" -m pip config get "global.$1" 2>/dev/null || true
}

find_uv() {
  local boot="$cache/uv-$uv_version"
  if command -v uv >/dev/null 2>&1; then command -v uv; return; fi
  if [ ! -x "$boot/bin/uv" ]; then
    rm -rf "$boot.tmp.$$"
    "$python" -m venv --without-pip "$boot.tmp.$$" >&2 &&
      "$python" -m pip --python "$boot.tmp.$$/bin/python" install --quiet \
        --disable-pip-version-check --only-binary=:all: "uv==$uv_version" >&2 &&
      mv -T "$boot.tmp.$$" "$boot" || { rm -rf "$boot.tmp.$$"; return 1; }
  fi
  echo "$boot/bin/uv"
}

# uv reads no pip.conf, so pip's index settings are passed on, and pip's way of choosing among
# several indexes (the best match across all of them) is asked for by name.
install_with_uv() {  # $1: the venv
  local uv setting url args=()
  uv="$(find_uv)" || return 1
  setting="$(pip_setting index-url)"; [ -z "$setting" ] || args+=(--index-url "$setting")
  for url in $(pip_setting extra-index-url); do args+=(--extra-index-url "$url"); done
  for url in $(pip_setting find-links); do args+=(--find-links "$url"); done
  setting="$(pip_setting cert)"
  SSL_CERT_FILE="${setting:-${SSL_CERT_FILE:-}}" UV_NO_CONFIG=1 "$uv" pip install --quiet \
    --compile-bytecode --python "$1/bin/python" --no-deps --only-binary :all: --index-strategy unsafe-best-match "${args[@]}" \
    -r "$here/requirements.txt" >&2
}

install_with_pip() {  # $1: the venv
  local i pids=""
  # Cold installs are dominated by index round trips, one package after another. The list is
  # pinned and installed --no-deps, so order does not matter: four pip processes share it
  # (botocore, the largest download, alone) and each writes only its own packages' files.
  grep -v '^#' "$here/requirements.txt" | grep . > "$1/.requirements"
  grep -i '^botocore==' "$1/.requirements" > "$1/.part0" || true
  for i in 1 2 3; do
    grep -v -i '^botocore==' "$1/.requirements" | awk -v n="$i" 'NR % 3 == n % 3' > "$1/.part$i"
  done
  for i in 0 1 2 3; do
    [ -s "$1/.part$i" ] || continue
    "$python" -m pip --python "$1/bin/python" install --quiet --disable-pip-version-check \
      --no-deps --only-binary=:all: -r "$1/.part$i" >&2 &
    pids="$pids $!"
  done
  for i in $pids; do wait "$i" || return 1; done
  rm -f "$1"/.requirements "$1"/.part*
}

build_deps() {
  local tmp="$deps.tmp.$$"
  rm -rf "$tmp"
  echo "airlock: installing dependencies into $deps (cold cache)" >&2
  "$python" -m venv --without-pip "$tmp" >&2
  if [ "${AIRLOCK_INSTALLER:-uv}" != uv ] || ! install_with_uv "$tmp"; then
    [ "${AIRLOCK_INSTALLER:-uv}" != uv ] || echo "airlock: uv failed; installing with pip" >&2
    install_with_pip "$tmp"
  fi
  "$tmp/bin/python" -c 'import boto3, cryptography, httpx, jwt, pydantic, re2, rich, yaml' >&2
  mv -T "$tmp" "$deps"
}

build_venv() {
  local tmp="$venv.tmp.$$" site
  rm -rf "$tmp"
  cp -al "$deps" "$tmp"
  site="$("$tmp/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  cp -r "$root/core/airlock" "$site/airlock"
  find "$site/airlock" -name '__pycache__' -prune -exec rm -rf {} +
  # Bytecode now, once (as pip and uv --compile-bytecode do for the dependencies): without it
  # every step that starts Airlock compiles ~150 modules first, about a second.
  "$tmp/bin/python" -m compileall -q "$site/airlock" >&2
  printf '#!/bin/sh\nexec "$(dirname "$0")/python" -P -m airlock._cli "$@"\n' > "$tmp/bin/airlock.tmp"
  chmod 755 "$tmp/bin/airlock.tmp"
  mv "$tmp/bin/airlock.tmp" "$tmp/bin/airlock"
  # every command module imports: a dependency missing from requirements.txt fails here, once
  "$tmp/bin/python" -P -m airlock._cli --version >&2
  mv -T "$tmp" "$venv"
}

(
  flock -w 600 9 || { echo "airlock: error: timed out waiting for $cache/.lock" >&2; exit 85; }
  [ -d "$deps" ] || build_deps
  [ -d "$venv" ] || build_venv
  # venvs of older checkouts of the action: unused for a week, gone
  find "$cache" -maxdepth 1 -name 'venv-*' -type d -mtime +7 ! -path "$venv" -exec rm -rf {} + || true
) 9>"$cache/.lock"

echo "$venv/bin/python"
