#!/usr/bin/env bash
# The main job on embedded defaults: run the demo agent inside an Airlock session (local files,
# local signing key, no cloud account), then verify the sealed log and show what it recorded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sessions=${AIRLOCK_SESSIONS:-.airlock/demo-sessions}
mkdir -p "$sessions"
DEMO_API_KEY="demo-$(python -c 'import secrets; print(secrets.token_hex(16))')"
export DEMO_API_KEY

# The agent runs in the sandbox, which shows it the system read-only and the workspace. A Python
# installed elsewhere (pyenv, a toolchain under $HOME) is added to what it may read.
policy=$(mktemp)
trap 'rm -f "$policy"' EXIT
cp examples/demo-policy.yaml "$policy"
prefix=$(python -c 'import os, sys; print(os.path.realpath(sys.base_prefix))')
case "$prefix" in
  /usr | /usr/*) ;;
  *) printf '  filesystem: {read_only: ["%s"]}\n' "$prefix" >>"$policy" ;;
esac

before=$(ls -1 "$sessions")
echo "== airlock run -- python examples/demo_agent.py"
airlock run --policy "$policy" --sessions "$sessions" -- python examples/demo_agent.py
session=$(comm -13 <(echo "$before") <(ls -1 "$sessions") | tail -n 1)

echo
echo "== airlock verify $sessions/$session"
airlock verify "$sessions/$session"
echo
echo "== airlock show $sessions/$session"
airlock show "$sessions/$session"
