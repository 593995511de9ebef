"""Per-byte cost of the output path after a chunk is read, stage by stage, in CPU ms per MB.

What `airlock run` does with each ~1 MiB chunk of a command's output, measured in one process
(no start-up, no reading, no scheduling): masking (`StreamMasker.feed` plus the `pending()` the
recorder takes for its crash spool), then recording (`decode`, `SessionWriter.append`: JSON
escaping, the line's chain hash, the write, and the whole-file hash on its own thread). CPU is
the process's (every thread), so a loaded machine changes it far less than wall time.

    .venv/bin/python bench/output_stages.py [--mb 50] [--rounds 5] [--before TREE]

--before: also measure the `airlock` of another checkout (PYTHONPATH=TREE/core), in turns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _util import load_average, log_corpus

_CHILD = r"""
import json, os, sys, tempfile, time
from pathlib import Path
from airlock.audit import SessionWriter
from airlock.mask import Masker, MaskSettings
corpus, mb = sys.argv[1], int(sys.argv[2])
with open(corpus, "rb") as f:
    data = f.read(mb * 1_000_000)
chunks = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
masker = Masker(MaskSettings(literals=(("env:BENCH_SECRET", "bench-secret-value-0123456789abcdef"),)))
stream = masker.stream()
stream.feed(chunks[0])
shown = []
start = time.process_time()
for chunk in chunks:
    shown.append(stream.feed(chunk))
    stream.pending()
mask = time.process_time() - start
with tempfile.TemporaryDirectory(dir=sys.argv[3]) as tmp:
    writer = SessionWriter.create(Path(tmp))
    start = time.process_time()
    for out in shown:
        writer.append("output", {"stream": "stdout", "text": out.decode("utf-8")})
    writer._whole.hexdigest()  # waits for the whole-file hash
    record = time.process_time() - start
    writer.close()
size = len(data) / 1e6
print(json.dumps({"mask": mask * 1000 / size, "record": record * 1000 / size}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path)
    parser.add_argument("--sessions", type=Path, default=Path("/dev/shm"))
    args = parser.parse_args()
    corpus = log_corpus(200)
    trees = {"after": Path(__file__).resolve().parents[1]}
    if args.before is not None:
        trees["before"] = args.before.resolve()
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    print(
        f"output stages, {args.mb} MB in 1 MiB chunks, {args.rounds} rounds in turns; "
        f"load average before: {load_average()}"
    )
    for _ in range(args.rounds):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree / "core")}
            argv = [sys.executable, "-c", _CHILD, str(corpus), str(args.mb), str(args.sessions)]
            out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
            samples[name].append(json.loads(out.stdout))
    for name, got in samples.items():
        cells = []
        for stage in ("mask", "record"):
            values = [s[stage] for s in got]
            cells.append(f"{stage} {statistics.median(values):5.2f} (min {min(values):5.2f})")
        total = statistics.median(s["mask"] + s["record"] for s in got)
        print(f"{name:7} CPU ms/MB, median (min): {'  '.join(cells)}  total {total:5.2f}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
