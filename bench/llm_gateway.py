"""Streamed tokens/s and time to first byte through the model gateway vs direct to the server.

Same run, same machine: a fake Anthropic Messages server streaming SSE (its own process), the
Airlock model gateway in front of it (its own process: ticket check, held key, every event
parsed and assembled, llm.request/llm.response recorded to a real session log with masking), and
a client in this process (httpx, streaming) that measures time to the first body byte and the
event rate of whole streams. Direct and gateway alternate; the median over rounds counts.

Two upstream speeds: paced (``--pace-ms`` between events, default 1 ms = 1,000 tokens/s, ten
times a fast model) is what an agent sees; unpaced (as fast as the server writes) is the
gateway's capacity. Targets (issue 15): ≥ 0.9x the direct rate, ≤ 5 ms added TTFB.

    .venv/bin/python bench/llm_gateway.py [--quick] [--events 1000] [--rounds 5] [--pace-ms 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _util import free_port, serve_until_killed, wait_port

_TICKET = "bench-ticket-" + "t" * 32
_KEY = "sk-ant-bench-" + "k" * 40


def _events(n: int) -> bytes:
    start = {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 9}}}
    out = [f"event: message_start\ndata: {json.dumps(start)}\n\n"]
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
    out.append(f"event: content_block_start\ndata: {json.dumps(block)}\n\n")
    for i in range(n):
        delta = {"type": "content_block_delta", "index": 0,
                 "delta": {"type": "text_delta", "text": f"tok{i} "}}  # fmt: skip
        out.append(f"event: content_block_delta\ndata: {json.dumps(delta)}\n\n")
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
           "usage": {"output_tokens": n}}  # fmt: skip
    out.append(f"event: message_delta\ndata: {json.dumps(end)}\n\n")
    out.append('event: message_stop\ndata: {"type":"message_stop"}\n\n')
    return "".join(out).encode()


def _run_upstream(port: int, n: int, pace: float) -> None:
    import uvicorn

    events = [e + b"\n\n" for e in _events(n).split(b"\n\n") if e]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        paced = b"paced" in scope.get("query_string", b"")
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for event in events:  # one write per event, as a model server streams
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if paced:
                await asyncio.sleep(pace)
        await send({"type": "http.response.body", "body": b""})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                lifespan="off")  # fmt: skip


def _run_gateway(port: int, upstream: str, sessions: str) -> None:
    from airlock.audit import SessionWriter
    from airlock.gateway.llm import serve_llm
    from airlock.gateway.tickets import Ticket
    from airlock.mask import Masker, MaskSettings
    from airlock.policy.agent_gateways import LlmGatewayConfig

    config = LlmGatewayConfig.model_validate(
        {
            "name": "bench",
            "kind": "llm",
            "provider": "anthropic",
            "upstream": upstream,
            "listen": f"127.0.0.1:{port}",
        }
    )
    writer = SessionWriter.create(Path(sessions))

    serve_until_killed(
        lambda: serve_llm(
            config,
            masker=Masker(MaskSettings()),
            record=writer.append,
            approve=None,
            ticket=Ticket("bench-session", "bench", _TICKET),
            environ={"ANTHROPIC_API_KEY": _KEY},
        )
    )


def _one_stream(client: Any, url: str, key: str, path: str) -> tuple[float, float, int]:
    """(ttfb seconds, total seconds, events) for one streamed answer."""
    body = {"model": "m", "max_tokens": 10, "stream": True,
            "messages": [{"role": "user", "content": "go"}]}  # fmt: skip
    started = time.perf_counter()
    first = 0.0
    events = 0
    with client.stream("POST", url + path, json=body, headers={"x-api-key": key}) as r:
        for chunk in r.iter_raw():
            if not first:
                first = time.perf_counter() - started
            events += chunk.count(b"\n\n")
    return first, time.perf_counter() - started, events


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 500 events")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pace-ms", type=float, default=1.0)
    parser.add_argument("--role", choices=["upstream", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--sessions", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        _run_upstream(args.port, args.events, args.pace_ms / 1000)
    elif args.role == "gateway":
        _run_gateway(args.port, args.upstream, args.sessions)
    else:
        events, rounds = (300, 3) if args.quick else (args.events, args.rounds)
        _bench(events, rounds, args.pace_ms)


Results = dict[str, list[tuple[float, float, int]]]


def _bench(n: int, rounds: int, pace_ms: float) -> None:
    import httpx

    up, gw = free_port(), free_port()
    me = [sys.executable, __file__]
    with tempfile.TemporaryDirectory() as sessions:
        procs = [
            subprocess.Popen(
                [*me, "--role", "upstream", "--port", str(up), "--events", str(n),
                 "--pace-ms", str(pace_ms)]
            ),
            subprocess.Popen(
                [*me, "--role", "gateway", "--port", str(gw), "--upstream",
                 f"http://127.0.0.1:{up}", "--sessions", sessions],
                stdout=subprocess.PIPE, text=True,
            ),
        ]  # fmt: skip
        try:
            wait_port(up)
            assert procs[1].stdout is not None and procs[1].stdout.readline().strip() == "ready"
            targets = {"direct": (f"http://127.0.0.1:{up}", _KEY),
                       "gateway": (f"http://127.0.0.1:{gw}", _TICKET)}  # fmt: skip
            by_speed: dict[str, Results] = {}
            with httpx.Client(timeout=60) as client:
                for url, key in targets.values():  # warm up both paths
                    _one_stream(client, url, key, "/v1/messages")
                for speed, path in (("paced", "/v1/messages?paced=1"), ("unpaced", "/v1/messages")):
                    results: Results = {"direct": [], "gateway": []}
                    for _ in range(rounds):
                        for name, (url, key) in targets.items():
                            results[name].append(_one_stream(client, url, key, path))
                    by_speed[speed] = results
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    print(f"{n} streamed events per answer, median of {rounds} rounds; paced: {pace_ms} ms apart")
    for speed, results in by_speed.items():
        _report(n, speed, results)


def _report(n: int, speed: str, results: Results) -> None:
    rate = {k: statistics.median(e / t for _, t, e in v) for k, v in results.items()}
    ttfb = {k: statistics.median(f for f, _, _ in v) * 1000 for k, v in results.items()}
    assert all(e >= n for _, _, e in results["gateway"]), "the gateway lost events"
    print(f"\n{speed} upstream")
    print(f"{'path':<10} {'events/s':>10} {'TTFB ms':>9}")
    for name in ("direct", "gateway"):
        print(f"{name:<10} {rate[name]:>10.0f} {ttfb[name]:>9.2f}")
    print(f"rate ratio gateway/direct: {rate['gateway'] / rate['direct']:.2f}x (target >= 0.9x)")
    print(f"TTFB added: {ttfb['gateway'] - ttfb['direct']:.2f} ms (target <= 5 ms)")


if __name__ == "__main__":
    main()
