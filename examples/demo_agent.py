#!/usr/bin/env python3
"""A stand-in for an AI coding agent, for the demo and the tests.

It does what agents do that matters to an audit: runs commands, starts nested processes, and
leaks secrets by accident: printed raw, base64-encoded, split across two writes, and a token
shaped like a GitHub token. Run it inside `airlock run` and none of that reaches the terminal or
the log unmasked.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main() -> int:
    secret = os.environ.get("DEMO_API_KEY", "")
    say("agent: planning the change: add input validation to the signup handler")
    subprocess.run(["sh", "-c", "echo 'agent: workspace:' && ls -1 | head -5"], check=True)
    subprocess.run(
        [sys.executable, "-c", "import subprocess; subprocess.run(['echo', 'agent: nested tool'])"],
        check=True,
    )
    say(f"agent: oops, debugging the API client with key={secret}")
    say("agent: encoded for a header: " + base64.b64encode(secret.encode()).decode())
    half = len(secret) // 2
    sys.stdout.write("agent: split write: " + secret[:half])
    sys.stdout.flush()
    time.sleep(0.05)
    sys.stdout.write(secret[half:] + "\n")
    sys.stdout.flush()
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" + "K1l2M3n4O5p6Q7r8"  # GitHub-token shaped, not real
    sys.stderr.write(f"agent: found a token in .env: {token}\n")
    say("agent: running the tests")
    result = subprocess.run(["sh", "-c", "exit 0"], check=False)
    say(f"agent: done (tests exit {result.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
