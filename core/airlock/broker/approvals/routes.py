"""HTTP: the approval endpoints and webhooks, with size caps and long-poll."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from airlock.broker.approvals.bodies import CreateBody
from airlock.broker.approvals.service import ApprovalService, WebhookResult
from airlock.broker.approvals.store import PENDING, ApprovalRow
from airlock.broker.requests import BadRequest, bearer, check_depth, loads, read_body
from airlock.broker.service import Broker
from airlock.errors import UsageError

__all__ = [
    "MAX_CREATE_BYTES",
    "MAX_WAIT",
    "MAX_WEBHOOK_BYTES",
    "approval_routes",
]

MAX_WEBHOOK_BYTES = 1024 * 1024
MAX_CREATE_BYTES = 512 * 1024
MAX_WAIT = 60.0

Handler = Callable[[Request], Awaitable[Response]]


# -- HTTP -----------------------------------------------------------------------------------------


def approval_routes(broker: Broker) -> list[tuple[str, Handler, list[str], str]]:
    """``(path, handler, methods, name)`` for the broker app's route list."""
    service = ApprovalService(broker)

    async def create(request: Request) -> Response:
        token = bearer(request)
        body = CreateBody.model_validate(loads(await read_body(request, MAX_CREATE_BYTES)))
        row = await run_in_threadpool(service.create, token, body)
        return JSONResponse(row.public(), status_code=201, headers={"Cache-Control": "no-store"})

    async def status(request: Request) -> Response:
        token = bearer(request)
        request_id = request.path_params["request_id"]
        wait = _wait_seconds(request.query_params.get("wait", "0"))
        row = await run_in_threadpool(service.status, token, request_id)
        deadline = time.monotonic() + wait
        while row.status == PENDING and time.monotonic() < deadline:
            row = await _next(service, token, request_id, deadline)
        return JSONResponse(row.public(), headers={"Cache-Control": "no-store"})

    async def github(request: Request) -> Response:
        raw = await read_body(request, MAX_WEBHOOK_BYTES)
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await _webhook(service.github_webhook, headers, raw)

    async def gitlab(request: Request) -> Response:
        raw = await read_body(request, MAX_WEBHOOK_BYTES)
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await _webhook(service.gitlab_webhook, headers, raw)

    return [
        ("/v1/approvals", create, ["POST"], "approval-create"),
        ("/v1/approvals/{request_id}", status, ["GET"], "approval-status"),
        ("/v1/webhooks/github", github, ["POST"], "webhook-github"),
        ("/v1/webhooks/gitlab", gitlab, ["POST"], "webhook-gitlab"),
    ]


async def _next(
    service: ApprovalService, token: str, request_id: str, deadline: float
) -> ApprovalRow:
    """Sleep until a local decision, a re-read tick (other replicas) or the deadline."""
    seen = service.version
    tick = min(time.monotonic() + 1.0, deadline)
    while service.version == seen and time.monotonic() < tick:
        await asyncio.sleep(0.02)
    return await run_in_threadpool(service.status, token, request_id)


async def _webhook(
    handler: Callable[[Mapping[str, str], bytes], WebhookResult],
    headers: Mapping[str, str],
    raw: bytes,
) -> Response:
    try:
        check_depth(raw)
        result = await run_in_threadpool(handler, headers, raw)
    except BadRequest as exc:
        result = WebhookResult(exc.code, exc.status, exc.message)
    except UsageError as exc:
        result = WebhookResult("bad-request", 400, exc.message)
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})
        result = WebhookResult("bad-request", 400, f"malformed payload: check {', '.join(fields)}")
    return result.response()


def _wait_seconds(raw: str) -> float:
    try:
        wait = float(raw)
    except ValueError:
        raise UsageError("wait is a number of seconds") from None
    if not 0 <= wait <= MAX_WAIT:
        raise UsageError(f"wait is between 0 and {MAX_WAIT:.0f} seconds")
    return wait
