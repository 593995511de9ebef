"""Search speed: `airlock search` (DuckDB over the session logs) vs `grep -r` on the same files.

    .venv/bin/python bench/search_speed.py [--quick] [--mb N] [--sessions N]

Builds N sealed sessions (default 1,000) totalling about 1 GB (--quick: 100 MB), then times, in
the same run: a text search for a rare needle (airlock: `--text`, view with identity join; grep:
`grep -r -c -F`), a structured filter (type + rule + outcome) that grep can only approximate,
and the `airlock search` CLI end to end. Figures are MB of logs scanned per second.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from airlock.archive.search import SearchFilters, build_query, open_events, run_query  # noqa: E402
from airlock.audit import SessionWriter, load_signing_key  # noqa: E402
from airlock.events import Identity  # noqa: E402

NEEDLE = "needle-7f3a9c"
REPOS = ["acme/api", "acme/web", "acme/db", "other/tool"]


def build_corpus(root: Path, sessions: int, megabytes: int) -> int:
    """Sessions of output, exec, query and guardrail events; returns the needle count."""
    os.environ.setdefault("XDG_CONFIG_HOME", str(root / "xdg"))
    key = load_signing_key()
    per_session = megabytes * 1_000_000 // sessions
    rng = random.Random(7)
    needles = 0
    for i in range(sessions):
        writer = SessionWriter.create(root / "sessions")
        identity = Identity(
            platform="github", repository=REPOS[i % 4], run_id=str(i), actor=f"u{i % 9}"
        )
        writer.append("session.start", {"identity": identity.to_dict()})
        written = 0
        while written < per_session:
            n = rng.randrange(1_000_000)
            text = (
                f"step {n}: compiled module_{n % 997} in {n % 89} ms, cache {'hit' if n % 3 else 'miss'}\n"
                * 6
            )
            if n % 5000 == 0:
                text += f"found {NEEDLE}\n"
                needles += 1
            writer.append("output", {"stream": "stdout", "text": text})
            if n % 40 == 0:
                writer.append("process.exec", {"pid": n, "argv": ["make", f"target{n}"]})
            if n % 200 == 0:
                writer.append("db.query", {"sql": f"DELETE FROM t{n}"})
                writer.append(
                    "guardrail.decision", {"rule_id": "no-unscoped-delete", "outcome": "deny"}
                )
            written += len(text) + 150
        writer.append("session.end", {"exit_status": 0})
        writer.seal(key, exit_code=0)
        writer.close()
    return needles


def timed(func):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 MB instead of 1 GB")
    parser.add_argument("--mb", type=int)
    parser.add_argument("--sessions", type=int, default=1000)
    args = parser.parse_args()
    megabytes = args.mb or (100 if args.quick else 1000)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_s, needles = timed(lambda: build_corpus(root, args.sessions, megabytes))
        corpus = root / "sessions"
        size_mb = sum(p.stat().st_size for p in corpus.glob("*/events.jsonl")) / 1e6
        subprocess.run(
            ["cat", *map(str, corpus.glob("*/events.jsonl"))], stdout=subprocess.DEVNULL, check=True
        )

        grep_s, grep_out = timed(
            lambda: (
                subprocess.run(
                    ["grep", "-r", "-c", "-F", NEEDLE, str(corpus)],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
            )
        )
        grep_hits = sum(int(line.rsplit(":", 1)[1]) for line in grep_out.splitlines())

        con = open_events([corpus])
        sql, params = build_query(SearchFilters(text=NEEDLE, limit=None))
        text_s, (_, rows) = timed(lambda: run_query(con, sql, params))
        sql2, params2 = build_query(
            SearchFilters(
                types=("guardrail.decision",),
                rule="no-unscoped-delete",
                outcome="deny",
                repo="acme/api",
                limit=None,
            )
        )
        filter_s, (_, rows2) = timed(lambda: run_query(con, sql2, params2))
        grep2_s, _ = timed(
            lambda: subprocess.run(
                [
                    "grep",
                    "-r",
                    "-c",
                    "-F",
                    '"rule_id":"no-unscoped-delete","outcome":"deny"',
                    str(corpus),
                ],
                capture_output=True,
                check=False,
            )
        )
        cli_s, _ = timed(
            lambda: subprocess.run(
                [
                    str(ROOT / ".venv/bin/airlock"),
                    "search",
                    str(corpus),
                    "--text",
                    NEEDLE,
                    "--format",
                    "json",
                    "--limit",
                    "0",
                ],
                capture_output=True,
                check=True,
            )
        )
    print(
        f"corpus: {args.sessions} sessions, {size_mb:.0f} MB of events.jsonl (built in {build_s:.0f} s)"
    )
    print(f"needle matches: airlock {len(rows)}, grep {grep_hits}, written {needles}")
    print(f"baseline grep -r -c -F (text):          {grep_s:6.2f} s = {size_mb / grep_s:7.0f} MB/s")
    print(f"airlock search --text (library):        {text_s:6.2f} s = {size_mb / text_s:7.0f} MB/s")
    print(f"airlock search --text (CLI, end to end): {cli_s:6.2f} s = {size_mb / cli_s:7.0f} MB/s")
    print(
        f"airlock search --type --rule --outcome --repo: {filter_s:.2f} s ({len(rows2)} rows); grep approximation {grep2_s:.2f} s"
    )
    print(
        f"ratio airlock/grep throughput (text, library): {grep_s / text_s:.2f}x; CLI: {grep_s / cli_s:.2f}x"
    )


if __name__ == "__main__":
    main()
