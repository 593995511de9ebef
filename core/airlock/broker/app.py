"""The broker's HTTP API (ASGI, Starlette), versioned under ``/v1``.

    POST /v1/exchange                        {token, grants}        → credentials + job_token
    POST /v1/revoke                          Bearer job_token       → {revoked}
    POST /v1/sessions/{id}/checkpoints       Bearer job_token, {seq, head} → signed checkpoint
    GET  /v1/sessions/{id}/checkpoints                              → witnessed checkpoints
    GET  /.well-known/airlock-keys                                  → public signing keys
    GET  /healthz, GET /metrics (Prometheus)
    POST /v1/approvals, GET /v1/approvals/{id}, POST /v1/webhooks/{github,gitlab}  (approvals.py)

Callers get a short, actionable reason; the broker log gets the precise one; neither gets a
token. Request bodies are capped. Blocking work (token verification, providers, SQL) runs in a
thread pool so one slow upstream does not stall the event loop.

:func:`serve` runs the broker under uvicorn, in one process or in ``workers`` processes on one
listening socket (each worker its own broker over the shared state store; see DESIGN: the broker
is stateless, so workers scale like replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from airlock.broker.approvals import approval_routes
from airlock.broker.requests import BadRequest, bearer, check_session_id, read_json
from airlock.broker.service import Broker, RateLimited
from airlock.broker.tickets import ticket_routes
from airlock.errors import AirlockError, InfrastructureUnavailable, PolicyDenied, UsageError
from airlock.oidc import OIDCError

__all__ = ["MAX_BODY_BYTES", "app_from_environment", "create_app", "serve"]

log = logging.getLogger("airlock.broker")

MAX_BODY_BYTES = 64 * 1024
Handler = Callable[[Request], Awaitable[Response]]


class ExchangeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=16 * 1024)
    grants: list[str] = Field(default_factory=list, max_length=32)


class CheckpointBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=0)
    head: str = Field(min_length=64, max_length=64)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "airlock_broker_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.exchanges = Counter(
            "airlock_broker_exchanges", "exchange outcomes", ["outcome"], registry=self.registry
        )
        self.latency = Histogram(
            "airlock_broker_request_seconds", "request latency", ["route"], registry=self.registry
        )


def create_app(
    broker: Broker, *, sweep_interval: float = 30.0, owns_broker: bool = False
) -> Starlette:
    """The broker's ASGI app. A background task sweeps expired leases every ``sweep_interval``.
    With ``owns_broker`` the app closes the broker and its store when it shuts down."""
    metrics = _Metrics()

    def route(path: str, handler: Handler, methods: list[str], name: str) -> Route:
        async def wrapped(request: Request) -> Response:
            with metrics.latency.labels(name).time():
                response = await _guard(handler, request)
            metrics.requests.labels(name, str(response.status_code)).inc()
            return response

        return Route(path, wrapped, methods=methods)

    async def exchange(request: Request) -> Response:
        body = ExchangeBody.model_validate(await read_json(request, MAX_BODY_BYTES))
        try:
            result = await run_in_threadpool(broker.exchange, body.token, body.grants)
        except AirlockError as exc:
            metrics.exchanges.labels(_outcome(exc)).inc()
            raise
        metrics.exchanges.labels("issued").inc()
        return JSONResponse(
            {
                "job_token": result.job_token,
                "rule_id": result.rule_id,
                "not_granted": list(result.not_granted),
                "expires_at": result.expires_at,
                "leases": [
                    {
                        "lease_id": c.lease_id,
                        "grant": c.grant_name,
                        "provider": c.provider,
                        "expires_at": c.expires_at.timestamp(),
                        "values": dict(c.values),
                    }
                    for c in result.credentials
                ],
            },
            headers={"Cache-Control": "no-store"},
        )

    async def revoke(request: Request) -> Response:
        revoked = await run_in_threadpool(broker.revoke_job, bearer(request))
        return JSONResponse({"revoked": revoked})

    async def add_checkpoint(request: Request) -> Response:
        body = CheckpointBody.model_validate(await read_json(request, MAX_BODY_BYTES))
        session_id = check_session_id(request.path_params["session_id"])
        row = await run_in_threadpool(
            broker.witness, bearer(request), session_id, body.seq, body.head
        )
        return JSONResponse(row.__dict__, status_code=201)

    async def list_checkpoints(request: Request) -> Response:
        session_id = check_session_id(request.path_params["session_id"])
        rows = await run_in_threadpool(broker.store.checkpoints, session_id)
        return JSONResponse({"checkpoints": [r.__dict__ for r in rows]})

    async def keys(_request: Request) -> Response:
        return JSONResponse({"keys": broker.public_keys()})

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def prometheus(_request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_sweeper(broker, sweep_interval))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if owns_broker:
                broker.close()
                broker.store.close()

    return Starlette(
        routes=[
            route("/v1/exchange", exchange, ["POST"], "exchange"),
            route("/v1/revoke", revoke, ["POST"], "revoke"),
            route("/v1/sessions/{session_id}/checkpoints", add_checkpoint, ["POST"], "checkpoint"),
            route(
                "/v1/sessions/{session_id}/checkpoints", list_checkpoints, ["GET"], "checkpoints"
            ),
            route("/.well-known/airlock-keys", keys, ["GET"], "keys"),
            route("/healthz", healthz, ["GET"], "healthz"),
            route("/metrics", prometheus, ["GET"], "metrics"),
            *(route(*spec) for spec in approval_routes(broker)),
            *(route(*spec) for spec in ticket_routes(broker)),
        ],
        lifespan=lifespan,
    )


async def _guard(handler: Handler, request: Request) -> Response:
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(exc.status, exc.code, exc.message)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})
        return _error(400, "bad-request", f"invalid request body: check {', '.join(fields)}")
    except OIDCError as exc:
        return _error(401, exc.reason, exc.message)
    except RateLimited as exc:
        return _error(429, "rate-limited", exc.message)
    except PolicyDenied as exc:
        return _error(403, "denied", exc.message, rule_id=exc.rule_id)
    except UsageError as exc:
        return _error(400, "bad-request", exc.message)
    except InfrastructureUnavailable as exc:
        return _error(503, "unavailable", exc.message)
    except AirlockError as exc:
        return _error(400, "bad-request", exc.message)
    except Exception:
        log.exception("internal error on %s", request.url.path)
        return _error(500, "internal", "internal error; see the broker log")


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    body = {"error": code, "message": message, **{k: v for k, v in extra.items() if v}}
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _outcome(exc: AirlockError) -> str:
    if isinstance(exc, OIDCError):
        return "bad-token"
    if isinstance(exc, RateLimited):
        return "rate-limited"
    if isinstance(exc, PolicyDenied):
        return "denied"
    return "error"


async def _sweeper(broker: Broker, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(broker.sweep)
        except Exception:
            log.exception("lease sweep failed")


# -- running it -----------------------------------------------------------------------------------

_LOG_FORMAT = "%(asctime)s %(name)s %(message)s"
_ENV_CONFIG = "AIRLOCK_BROKER_CONFIG"
_ENV_KEY = "AIRLOCK_BROKER_SIGNING_KEY"
_ENV_SWEEP = "AIRLOCK_BROKER_SWEEP_INTERVAL"


def serve(
    config_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    signing_key: Path | None = None,
    sweep_interval: float = 30.0,
) -> None:
    """Run the broker under uvicorn until it is stopped.

    The config is checked, the state store's tables created and the signing key loaded (the
    default key generated) here, once, before any worker starts; with ``workers > 1`` this
    process binds the socket and uvicorn's supervisor starts that many processes on it, each
    building its own broker through :func:`app_from_environment`. Each worker sweeps expired
    leases (claims are atomic) and keeps its own Prometheus counters."""
    from airlock.audit import load_signing_key
    from airlock.broker.state import StateStore
    from airlock.errors import UsageError
    from airlock.policy.broker_config import load_broker_config

    if workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    config = load_broker_config(config_path)
    Broker.check_config(config)  # refuse a bad config before anything is created on disk
    store = StateStore(config.state)
    key = load_signing_key(signing_key)
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    import uvicorn

    from airlock.broker.http_protocol import BoundedHttpToolsProtocol

    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "info",
        "access_log": False,  # request lines carry no secrets, but paths carry session ids
        "http": BoundedHttpToolsProtocol,  # a request head of bounded size
    }
    if workers == 1:
        broker = Broker(config, store=store, key=key)
        try:
            uvicorn.run(create_app(broker, sweep_interval=sweep_interval), **options)
        finally:
            broker.close()
            store.close()
        return
    from uvicorn.supervisors import Multiprocess

    store.close()
    os.environ[_ENV_CONFIG] = str(Path(config_path).resolve())
    os.environ[_ENV_SWEEP] = repr(sweep_interval)
    if signing_key is not None:
        os.environ[_ENV_KEY] = str(signing_key.resolve())
    app = f"{__name__}:app_from_environment"
    server_config = uvicorn.Config(app, factory=True, workers=workers, **options)
    sock = server_config.bind_socket()
    # Workers serve connections accepted from this socket, which asyncio does not recognise as
    # TCP (proto 0): without TCP_NODELAY, which accepted sockets inherit, each response whose
    # head and body go out in two writes waits ~40 ms for the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        Multiprocess(server_config, sockets=[sock]).run()
    finally:
        sock.close()


def app_from_environment() -> Starlette:
    """One worker's app (a uvicorn factory): the broker named by ``$AIRLOCK_BROKER_CONFIG``,
    signing with ``$AIRLOCK_BROKER_SIGNING_KEY`` (default: the local key)."""
    from airlock.audit import load_signing_key
    from airlock.broker.state import StateStore
    from airlock.policy.broker_config import load_broker_config

    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)
    config = load_broker_config(os.environ[_ENV_CONFIG])
    key_path = os.environ.get(_ENV_KEY)
    key = load_signing_key(Path(key_path) if key_path else None)
    broker = Broker(config, store=StateStore(config.state), key=key)
    sweep = float(os.environ.get(_ENV_SWEEP, "30"))
    return create_app(broker, sweep_interval=sweep, owns_broker=True)
