"""Masker throughput and recall: airlock's streaming masker vs detect-secrets (peer baseline).

Corpus: realistic log text generated here (build lines, JSON logs, test output, URLs, hashes,
base64 blobs), with 1,000 literal secrets (raw and encoded) and 1,000 pattern-shaped tokens
planted at known positions (--quick: 100 of each, the same density). Rules: the 12 built-ins
plus 38 generated policy patterns (50).
Each engine streams the corpus in 64 KiB chunks. Recall: every planted value must be gone from
the output and every literal's marker present. Peer: detect-secrets' Python API
(``SecretsCollection.scan_file``, default plugins) on a slice of the same corpus, measured in
the same run; its recall is the share of planted lines it flags.

    .venv/bin/python bench/mask_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import base64
import random
import string
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import re2
from _util import LOG_WORDS

from airlock.mask import BUILTIN_RULES, Masker, MaskSettings, PatternRule

CHUNK = 64 * 1024
ALNUM = string.ascii_letters + string.digits
WORDS = [
    *LOG_WORDS,
    "retry",
    "upload",
    "download",
    "deploy",
    "migrate",
    "schema",
    "table",
    "index",
    "request",
    "response",
    "latency",
    "worker",
]


def rand(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    return "".join(rng.choices(alphabet, k=n))


def log_line(rng: random.Random, i: int) -> str:
    kind = i % 8
    if kind == 0:
        path = f"src/module_{rng.randint(0, 999)}.py:{rng.randint(1, 800)}"
        return f"[{i:07d}] {rng.choice(WORDS)} {path} {' '.join(rng.choices(WORDS, k=8))}"
    if kind == 1:
        return (
            f'{{"level":"info","ts":{1700000000 + i},"msg":"{rng.choice(WORDS)}",'
            f'"trace":"{rng.getrandbits(128):032x}","dur_ms":{rng.randint(1, 900)}}}'
        )
    if kind == 2:
        return f"PASSED tests/test_{rng.randint(0, 99)}.py::test_case_{rng.randint(0, 9999)}"
    if kind == 3:
        return f"GET https://api.example.com/v1/items/{rng.randint(1, 10**6)}?page=2 200 12ms"
    if kind == 4:
        return f"layer sha256:{rng.getrandbits(256):064x} pulled"
    if kind == 5:
        blob = base64.b64encode(rng.randbytes(48)).decode()
        return f"artifact {rng.choice(WORDS)}.tar.gz digest={blob}"
    if kind == 6:
        return f'  File "/usr/lib/python3.11/{rng.choice(WORDS)}.py", line {rng.randint(1, 999)}'
    return " ".join(rng.choices(WORDS, k=14))


def policy_patterns() -> tuple[PatternRule, ...]:
    rules = [PatternRule(f"acme{i:02d}", rf"\bacme{i:02d}_[A-Za-z0-9]{{32}}\b") for i in range(20)]
    rules += [
        PatternRule(f"x-api-key-{i}", rf"(?i)x-api-key-{i}:\s*(?P<secret>[A-Za-z0-9]{{24,}})")
        for i in range(10)
    ]
    rules += [PatternRule(f"svc{i}", rf"\bsvc{i}-[0-9a-f]{{40}}\b") for i in range(8)]
    return tuple(rules)


def pattern_token(rng: random.Random, k: int) -> str:
    shapes = [
        lambda: f"acme{rng.randint(0, 19):02d}_" + rand(rng, 32),
        lambda: f"X-Api-Key-{rng.randint(0, 9)}: " + rand(rng, 28),
        lambda: f"svc{rng.randint(0, 7)}-" + rand(rng, 40, "0123456789abcdef"),
        lambda: "gh" + "p_" + rand(rng, 36),
        lambda: "AK" + "IA" + rand(rng, 16, string.ascii_uppercase + "234567"),
        lambda: "gl" + "pat-" + rand(rng, 20),
        lambda: "postgres://app:" + rand(rng, 18) + "@db.internal/app",
        lambda: "sk" + "_live_" + rand(rng, 24),
    ]
    return shapes[k % len(shapes)]()


def secret_part(token: str) -> str:
    """What must disappear: the whole token, or the value after a key name / in a URL."""
    if token.startswith("X-Api-Key-"):
        return token.split(": ", 1)[1]
    if token.startswith("postgres://"):
        return token.split(":", 2)[2].split("@", 1)[0]
    return token


def encoded(rng: random.Random, value: bytes) -> bytes:
    choice = rng.random()
    if choice < 0.5:
        return value
    if choice < 0.7:
        return base64.b64encode(value)
    if choice < 0.8:
        return value.hex().encode()
    if choice < 0.9:
        return quote(value, safe="").encode()
    return base64.urlsafe_b64encode(value).rstrip(b"=")


def build_corpus(
    size: int, rng: random.Random, plant: int
) -> tuple[bytes, list[tuple[str, bytes]], list[bytes]]:
    """The corpus, the 1,000 literal secrets (id, value) and every planted string to look for.

    ``plant`` literals (the first ones) and ``plant`` pattern tokens are planted, so the density
    of secrets stays that of the full run (1 per 100 KB) whatever the size.
    """
    lines = [log_line(rng, i) for i in range(40_000)]
    block = ("\n".join(lines) + "\n").encode()
    base = (block * (size // len(block) + 1))[:size]
    literals = [(f"env:SECRET_{i}", rand(rng, rng.randint(24, 40)).encode()) for i in range(1000)]
    plants: list[tuple[int, bytes, bytes]] = []  # (offset, text to insert, what must vanish)
    for _, value in literals[:plant]:
        form = encoded(rng, value)
        plants.append((rng.randrange(size), b" token=" + form + b"\n", form))
    for k in range(plant):
        token = pattern_token(rng, k)
        plants.append((rng.randrange(size), f" {token}\n".encode(), secret_part(token).encode()))
    plants.sort()
    pieces, prev = [], 0
    for offset, text, _ in plants:
        cut = base.rfind(b"\n", prev, offset) + 1 or prev  # plant at a line start
        pieces += [base[prev:cut], text]
        prev = cut
    pieces.append(base[prev:])
    return b"".join(pieces), literals, [must for _, _, must in plants]


def run_airlock(
    engine: str, corpus: bytes, literals: list[tuple[str, bytes]]
) -> tuple[float, float, bytes]:
    """Stream the corpus in 64 KiB chunks: (wall seconds, CPU seconds, output)."""
    settings = MaskSettings(
        literals=tuple((rule_id, value.decode()) for rule_id, value in literals),
        patterns=policy_patterns(),
        engine=engine,  # type: ignore[arg-type]
    )
    masker = Masker(settings)
    stream = masker.stream()
    out = []
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(corpus), CHUNK):
        out.append(stream.feed(corpus[i : i + CHUNK]))
    out.append(stream.flush())
    return time.perf_counter() - start, time.process_time() - cpu, b"".join(out)


def recall(output: bytes, planted: list[bytes], literals: list[tuple[str, bytes]]) -> float:
    """Share of planted values gone from the output plus planted literals' markers present."""
    options = re2.Options()
    options.encoding = re2.Options.Encoding.LATIN1
    options.max_mem = 256 << 20
    finder = re2.compile(b"|".join(re2.escape(p) for p in set(planted)), options)
    survivors = {m.group() for m in finder.finditer(output)}
    missed = sum(1 for p in planted if p in survivors)
    markers = {m.group(1) for m in re2.finditer(rb"\[MASKED:(env:SECRET_\d+)\]", output)}
    missing_markers = sum(1 for rule_id, _ in literals if rule_id.encode() not in markers)
    return 1 - (missed + missing_markers) / (len(planted) + len(literals))


def run_peer(corpus: bytes, planted: list[bytes], slice_size: int) -> tuple[float, float, int]:
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    part = corpus[:slice_size]
    part = part[: part.rfind(b"\n") + 1]
    planted_lines = {part.count(b"\n", 0, part.find(p)) + 1 for p in planted if p in part}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "corpus.log")
        path.write_bytes(part)
        collection = SecretsCollection()
        start = time.perf_counter()
        with default_settings():
            collection.scan_file(str(path))
        seconds = time.perf_counter() - start
    flagged = {secret.line_number for _, secret in collection}
    found = len(planted_lines & flagged) / len(planted_lines) if planted_lines else 0.0
    return seconds, found, len(part)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20 MB instead of 200 MB")
    parser.add_argument("--peer-mb", type=float, default=None, help="detect-secrets slice (MB)")
    args = parser.parse_args()
    size = 20_000_000 if args.quick else 200_000_000
    peer_slice = int((args.peer_mb or (2 if args.quick else 10)) * 1_000_000)
    rng = random.Random(20240601)
    corpus, literals, planted = build_corpus(size, rng, plant=size // 200_000)
    rules = len(BUILTIN_RULES) + len(policy_patterns())
    print(
        f"mask throughput: {len(corpus) / 1e6:.0f} MB log text, {rules} pattern rules, "
        f"{len(literals)} literal secrets, {len(planted)} planted values, {CHUNK // 1024} KiB chunks"
    )
    outputs = {}
    speeds = {}
    mb = len(corpus) / 1e6
    for engine in ("hyperscan", "re2"):
        seconds, cpu, output = run_airlock(engine, corpus, literals)
        outputs[engine] = output
        speeds[engine] = mb / seconds
        print(
            f"  airlock {engine:<9} {seconds:7.2f} s  {mb / seconds:8.1f} MB/s "
            f"({mb / cpu:6.1f} MB/s of CPU time)  "
            f"recall {recall(output, planted, literals[: len(planted) // 2]) * 100:6.2f}%"
        )
    print(f"  engines agree byte for byte: {outputs['hyperscan'] == outputs['re2']}")
    few = literals[:20]
    for engine in ("hyperscan", "re2"):
        seconds, cpu, _ = run_airlock(engine, corpus, few)
        print(
            f"  (info) airlock {engine:<9} with {len(few)} literals (a typical session): "
            f"{mb / seconds:8.1f} MB/s ({mb / cpu:6.1f} MB/s of CPU time)"
        )
    seconds, found, nbytes = run_peer(corpus, planted, peer_slice)
    peer = nbytes / seconds / 1e6
    print(
        f"  detect-secrets (peer, first {nbytes / 1e6:.0f} MB slice) {seconds:7.2f} s  "
        f"{peer:8.2f} MB/s  recall {found * 100:6.2f}% of planted lines"
    )
    for engine, speed in speeds.items():
        print(f"  ratio airlock[{engine}] / detect-secrets: {speed / peer:8.1f}x")


if __name__ == "__main__":
    main()
