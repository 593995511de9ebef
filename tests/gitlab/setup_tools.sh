#!/usr/bin/env bash
# Install the tools the GitLab tests run, outside git: gitlab-ci-local and Node 22 from npm into
# .cache/gcl of the checkout, rsync from Debian. Idempotent; prints the gitlab-ci-local path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
prefix="$root/.cache/gcl"
bin="$prefix/node_modules/.bin"
if ! command -v rsync >/dev/null 2>&1; then
  (apt-get install -y rsync || { apt-get update && apt-get install -y rsync; }) >&2
fi
if [ ! -x "$bin/gitlab-ci-local" ] || [ ! -x "$bin/node" ]; then
  mkdir -p "$prefix"
  [ -f "$prefix/package.json" ] || echo '{"name": "airlock-test-tools", "private": true}' > "$prefix/package.json"
  npm install --prefix "$prefix" --no-audit --no-fund gitlab-ci-local@4.75.1 node@22 >&2
fi
"$bin/node" --version | grep -q '^v22\.' || { echo "node 22 missing in $bin" >&2; exit 1; }
echo "$bin/gitlab-ci-local"
