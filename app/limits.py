"""ASGI middleware: what is decided from the headers, before the body (size, key, admission); per-route metrics."""

from __future__ import annotations

import json
import time

from fastapi import HTTPException

from app.metrics import REQUEST_SECONDS, REQUESTS
from app.backpressure import Overloaded


class BodyTooLarge(HTTPException):
    """Raised from `receive` past the limit. An HTTPException, so FastAPI's body parsing passes it through."""

    def __init__(self, max_bytes: int):
        super().__init__(413, f"the request body is over the {max_bytes}-byte limit; send a smaller file")


class BodyLimit:
    """413 for a body over `max_bytes`: at once from Content-Length, else as soon as the stream passes it."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, BodyTooLarge(self.max_bytes).detail)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class RequestMetrics:
    """Counts and times every request by route template (not raw path: ids would explode the label set)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def observed_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            REQUEST_SECONDS.labels(template, scope["method"]).observe(time.perf_counter() - started)
            REQUESTS.labels(template, scope["method"], str(status["code"])).inc()


class KeyBeforeBody:
    """401 from the headers alone for a route that needs an API key, before any of the body is read.

    `needs_key(scope)` returns the matched route when it needs a key (the routes' own dependencies say
    so), `key_valid(authorization)` checks the header. The route's dependency checks again: this only
    spares the server a large upload it would refuse anyway.
    """

    def __init__(self, app, needs_key, key_valid):
        self.app = app
        self.needs_key = needs_key
        self.key_valid = key_valid

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            route = self.needs_key(scope)
            if route is not None and not self.key_valid(dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")):
                scope["route"] = route  # counted under its template, as if the route had answered
                await _send_json(send, 401, UNAUTHORISED, [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


class QueueFullOnArrival(HTTPException):
    """Raised from `receive` when a body has arrived and the model's queue is full: 503 with Retry-After.
    An HTTPException, so FastAPI's body parsing passes it through."""

    def __init__(self, err: Overloaded, retry_after_s: int):
        super().__init__(503, err.detail(retry_after_s), headers={"Retry-After": str(retry_after_s)})


class AdmitBeforeBody:
    """Admission for the model's routes (app/backpressure.py): an upload place from the headers, a queue place
    when the body has arrived; 503 with Retry-After at once when either is full.

    `model_route(scope)` returns the matched route when it uses the model, `admission()` the model's
    Admission (None before start-up). Refusing from the headers keeps a refusal quick under load: parsing a
    multipart upload first cost seconds at 64 clients. Taking the queue place only once the body is in
    keeps slow or stalled uploads from holding the model's queue (16 of them once locked it for 125 s).
    """

    def __init__(self, app, model_route, admission, retry_after_s: int):
        self.app = app
        self.model_route = model_route
        self.admission = admission
        self.retry_after_s = retry_after_s

    async def __call__(self, scope, receive, send):
        route = self.model_route(scope) if scope["type"] == "http" else None
        admission = self.admission() if route is not None else None
        if admission is None:
            return await self.app(scope, receive, send)
        try:
            admission.start_upload()
        except Overloaded as err:
            scope["route"] = route  # counted under its template, as if the route had answered
            return await _send_json(send, 503, err.detail(self.retry_after_s),
                                    [(b"retry-after", str(self.retry_after_s).encode())])
        uploading, queued = True, False

        async def admitted_receive():
            nonlocal uploading, queued
            message = await receive()
            if uploading and (message["type"] != "http.request" or not message.get("more_body", False)):
                uploading = False
                admission.end_upload()
                if message["type"] == "http.request":  # the whole body is in: now it waits for the model
                    try:
                        admission.enter()
                    except Overloaded as err:
                        raise QueueFullOnArrival(err, self.retry_after_s) from None
                    queued = True
            return message

        try:
            await self.app(scope, admitted_receive, send)
        finally:
            if uploading:
                admission.end_upload()
            if queued:
                admission.leave()


UNAUTHORISED = "a valid API key is required: send 'Authorization: Bearer <key>'"


async def _send_json(send, status: int, detail: str, headers: list = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
