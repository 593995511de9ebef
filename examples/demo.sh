#!/usr/bin/env bash
# The main job on embedded defaults: run the demo agent inside an Airlock session (local files,
# local signing key, no cloud account), then verify the sealed log and show what it recorded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sessions=${AIRLOCK_SESSIONS:-.airlock/demo-sessions}
mkdir -p "$sessions"
DEMO_API_KEY="demo-$(python -c 'import secrets; print(secrets.token_hex(16))')"
export DEMO_API_KEY

before=$(ls -1 "$sessions")
echo "== airlock run -- python examples/demo_agent.py"
airlock run --policy examples/demo-policy.yaml --sessions "$sessions" -- python examples/demo_agent.py
session=$(comm -13 <(echo "$before") <(ls -1 "$sessions") | tail -n 1)

echo
echo "== airlock verify $sessions/$session"
airlock verify "$sessions/$session"
echo
echo "== airlock show $sessions/$session"
airlock show "$sessions/$session"
