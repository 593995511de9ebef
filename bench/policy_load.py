"""Policy loading cost: `load_policy` (strict YAML, RE2 checks, line mapping) vs a bare baseline.

Baseline, same run, same file: ``yaml.safe_load`` + ``Policy.model_validate`` (the minimum any
loader must do). Also times a policy with many regex rules, and the failure path (every problem
listed with its line), which a user meets in `airlock policy check`.

    .venv/bin/python bench/policy_load.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from airlock.policy import Policy, PolicyError, load_policy

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "examples" / "policies" / "full.yaml"


def _many_rules(count: int) -> str:
    rules = "".join(
        f"    - {{id: rule-{i}, regex: 'tok{i}_[A-Za-z0-9]{{32}}', max_len: 40}}\n"
        for i in range(count)
    )
    env = ", ".join(f"VAR_{i}" for i in range(count))
    return f"mask:\n  env: [{env}]\n  patterns:\n{rules}"


def _broken(count: int) -> str:
    rules = "".join(f"    - {{id: r{i}, regex: 'a(', maxlen: 3}}\n" for i in range(count))
    return f"capture: {{exec: sometimes}}\nmask:\n  patterns:\n{rules}"


def _time(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _baseline(path: Path) -> Policy:
    return Policy.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def _failing(path: Path) -> None:
    try:
        load_policy(path)
    except PolicyError:
        return
    raise AssertionError("the broken policy loaded")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    repeat = 30 if parser.parse_args().quick else 300
    with tempfile.TemporaryDirectory() as tmp:
        many = Path(tmp) / "many.yaml"
        many.write_text(_many_rules(100), encoding="utf-8")
        broken = Path(tmp) / "broken.yaml"
        broken.write_text(_broken(50), encoding="utf-8")
        rows = [
            ("full.yaml", FULL),
            ("100 rules + 100 env names", many),
        ]
        print(f"{'policy':<28}{'load_policy':>14}{'baseline':>12}{'ratio':>8}")
        for name, path in rows:
            ours = _time(lambda p=path: load_policy(p), repeat)
            base = _time(lambda p=path: _baseline(p), repeat)
            print(f"{name:<28}{ours * 1e3:>11.3f} ms{base * 1e3:>9.3f} ms{ours / base:>7.2f}x")
        fail = _time(lambda: _failing(broken), max(repeat // 10, 3))
        print(f"{'broken, 101 problems':<28}{fail * 1e3:>11.3f} ms{'-':>12}{'-':>8}")
    print("baseline = yaml.safe_load + Policy.model_validate (no line mapping, YAML 1.1 booleans)")


if __name__ == "__main__":
    main()
