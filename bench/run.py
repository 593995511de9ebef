"""Run every benchmark in bench/ (or the ones named) and print their figures.

./dev bench [--quick] [name ...]      e.g. ./dev bench --quick output_throughput
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    quick = [a for a in argv if a == "--quick"]
    names = [a for a in argv if not a.startswith("-")]
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith(("_", "run")))
    if names:
        scripts = [p for p in scripts if p.stem in names]
    status = 0
    for script in scripts:
        print(f"\n### {script.stem}\n", flush=True)
        status |= subprocess.run([sys.executable, str(script), *quick], check=False).returncode
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
