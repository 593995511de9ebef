"""How fast is `airlock verify` compared with `sha256sum` of the same events.jsonl?

Builds a session of realistic events with SessionWriter (~1 GB, or ~100 MB with --quick), seals
it, then times, in the same run and on the same page-cached file:
  baseline  `sha256sum events.jsonl`
  library   airlock.audit.verify_session()
  cli       `airlock verify DIR --key-file PUB`, and `airlock --version` (its start-up)
all run in turns (best of --repeat each), then it prints MB/s for each and the
ratio library/baseline (target: >= 0.6).

    .venv/bin/python bench/verify_speed.py [--quick] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airlock.audit import SessionWriter, SigningKey, verify_session
from airlock.events import EventType

_WORDS = [
    "error",
    "warning",
    "build",
    "test",
    "passed",
    "failed",
    "src/app/models.py",
    "line",
    "def",
    "return",
    "import",
    "SELECT",
    "FROM",
    "WHERE",
    "users",
    "id",
    "email",
    "created_at",
    "migration",
    "applied",
    "0042_add_index",
    "ok",
    "npm",
    "install",
    "pip",
    "resolve",
    "dependency",
    "version",
    "1.2.3",
    "██",
    "progress",
    "45%",
    "✓",
    "😀",
    "déjà",
    "vu",
]


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
        if rng.random() < 0.08:
            words.append("\n")
    return " ".join(words)


def _events(rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """A pool of realistic events; the session cycles through it."""
    pool: list[tuple[str, dict[str, Any]]] = []
    for i in range(400):
        pid = 1000 + i
        argv = ["python", "-m", "pytest", f"tests/test_{i}.py", "-q", "--maxfail=1"]
        pool.append(
            (
                EventType.PROCESS_EXEC,
                {"pid": pid, "ppid": 999, "argv": argv, "cwd": "/srv/build/acme-api"},
            )
        )
        for _ in range(rng.randint(2, 6)):
            size = rng.choice((80, 200, 600, 1500, 4000))
            pool.append((EventType.OUTPUT, {"stream": "stdout", "text": _text(rng, size)}))
        if i % 5 == 0:
            sql = "SELECT id, email FROM users WHERE created_at > $1 ORDER BY id LIMIT 50"
            pool.append((EventType.DB_QUERY, {"gateway": "appdb", "sql": sql, "params": 1}))
            pool.append((EventType.DB_RESULT, {"gateway": "appdb", "rows": 50, "ms": 3.2}))
        if i % 7 == 0:
            pool.append(
                (
                    EventType.HTTP_REQUEST,
                    {"method": "POST", "url": "https://api.github.com/repos/acme/api/pulls"},
                )
            )
            pool.append((EventType.HTTP_RESPONSE, {"status": 201, "bytes": 5321}))
        pool.append((EventType.PROCESS_EXIT, {"pid": pid, "exit_code": 0}))
    return pool


def build(sessions: Path, target_bytes: int, key: SigningKey) -> tuple[Path, int]:
    rng = random.Random(42)
    pool = _events(rng)
    writer = SessionWriter.create(sessions)
    writer.append(EventType.SESSION_START, {"identity": {"platform": "local"}, "argv": ["bench"]})
    i = 0
    while writer._bytes < target_bytes:
        event_type, data = pool[i % len(pool)]
        writer.append(event_type, data)
        i += 1
    writer.append(EventType.SESSION_END, {"exit_code": 0})
    writer.seal(key, exit_code=0)
    return writer.path, writer.seq


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _quiet(argv: list[str]) -> None:
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)


def _interleaved(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Best time of each, run in turns so that load from other processes hits both alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for slot, fn in zip(times, fns, strict=True):
            slot.append(_timed(fn))
    return [min(slot) for slot in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~100 MB instead of ~1 GB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build under this directory and keep it")
    args = parser.parse_args()
    size = (100 if args.quick else 1000) * 1_000_000
    root = Path(tempfile.mkdtemp(dir=args.keep))
    try:
        key = SigningKey.generate()
        pub = root / "pub.pem"
        pub.write_bytes(key.public_pem())
        start = time.perf_counter()
        session, count = build(root / "sessions", size, key)
        built = time.perf_counter() - start
        events = session / "events.jsonl"
        nbytes = events.stat().st_size
        mb = nbytes / 1e6
        print(
            f"session: {count} events, {mb:.1f} MB, built in {built:.1f} s "
            f"({mb / built:.0f} MB/s through SessionWriter.append)",
            flush=True,
        )
        subprocess.run(["cat", str(events)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        trusted = {key.key_id: key.public_key}
        airlock = str(Path(sys.executable).with_name("airlock"))
        t_base, t_lib, t_cli, t_start = _interleaved(
            [
                lambda: _quiet(["sha256sum", str(events)]),
                lambda: verify_session(session, trusted),
                lambda: _quiet([airlock, "verify", str(session), "--key-file", str(pub)]),
                lambda: _quiet([airlock, "--version"]),
            ],
            args.repeat,
        )
        print(f"best of {args.repeat}, run in turns")
        print(f"baseline sha256sum        {t_base:7.3f} s  {mb / t_base:8.1f} MB/s")
        print(f"verify_session (library)  {t_lib:7.3f} s  {mb / t_lib:8.1f} MB/s")
        print(f"airlock verify (CLI)      {t_cli:7.3f} s  {mb / t_cli:8.1f} MB/s")
        print(f"  CLI start-up alone      {t_start:7.3f} s  (`airlock --version`)")
        print(f"ratio library/sha256sum = {t_base / t_lib:.2f}x  (target >= 0.60)")
        print(f"ratio cli/sha256sum     = {t_base / t_cli:.2f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
