"""Every ASGI middleware of open-speech, one small class per concern, shared by the router and the
family servers: request ids, bearer-key auth, upload size limits and request metrics."""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import re
import secrets
import time
import uuid
from urllib.parse import urlsplit

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import metrics
from common.errors import ApiError

logger = logging.getLogger("open_speech.http")
DRAIN_FACTOR = 10  # UploadLimit reads at most this many times its limit of a body it refused
GRACE_SECONDS = 30.0  # a request body may come at any pace this long, then at least ...
MIN_BYTES_PER_SECOND = 10_000  # ... this fast on average (80 kbit/s)
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestId:
    """Tag every request with an id (the client's X-Request-ID, or a new one): in logs and responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode(errors="replace")[:64]
        rid = incoming or uuid.uuid4().hex[:16]
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Give log records the id of the request being served (`%(request_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class RedactSecrets(logging.Filter):
    """Keep API keys sent in a URL (`?api_key=...`, as browsers' WebSockets send them) out of the logs."""

    SECRET = re.compile(r"(api_key=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.SECRET.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


class TrustedRequests:
    """Refuse what a hostile web page could send through the user's browser, whatever the key setting:

    - a `Host` that is not this server's (DNS rebinding: a page of evil.example whose name now points
      at 127.0.0.1): allowed are the loopback names, any IP address, and `hosts` ("*": any);
    - a cross-origin request that changes state or uploads (POST, PUT, PATCH, DELETE) or opens a
      WebSocket: allowed are the page's own origin (the one `Host` names) and `origins` ("*": any).

    Clients that are not browsers send no `Origin` and are not concerned by the second check.
    """

    UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
    LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})

    def __init__(self, app: ASGIApp, hosts: list[str], origins: list[str]) -> None:
        self.app = app
        self.hosts = self.LOOPBACK | {h.lower() for h in hosts}
        self.origins = {o.rstrip("/").lower() for o in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1").lower()
        origin = headers.get(b"origin", b"").decode("latin-1").rstrip("/").lower()
        if not self._host_allowed(host):
            why = f"Host '{host}' is not one this server answers to (see allowed_hosts)."
        elif (
            origin
            and (scope["type"] == "websocket" or scope["method"] in self.UNSAFE)
            and not self._origin_allowed(origin, host)
        ):
            why = f"Requests from the web page at {origin} are not allowed (see cors_origins)."
        else:
            await self.app(scope, receive, send)
            return
        logger.warning("refused: %s", why)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": why[:120]})
            return
        await ApiError(403, why, code="forbidden").response()(scope, receive, send)

    def _host_allowed(self, host: str) -> bool:
        try:
            name = urlsplit("//" + host).hostname or ""
        except ValueError:  # a malformed Host header
            return False
        if "*" in self.hosts or name in self.hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def _origin_allowed(self, origin: str, host: str) -> bool:
        return "*" in self.origins or origin in self.origins or origin.split("://", 1)[-1] == host


class BearerAuth:
    """`Authorization: Bearer <key>` on every route but /health and the web page, in OpenAI's error shape when wrong.

    The page (`/` and its static files under /web/) holds no data: it asks for the key and sends it to the API.
    """

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _public(scope["path"]) and scope["method"] != "OPTIONS":
            given = bearer(dict(scope["headers"]).get(b"authorization", b""))
            if not secrets.compare_digest(given, self.key):
                error = ApiError(
                    401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key"
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def bearer(authorization: bytes) -> bytes:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case), else b""."""
    scheme, _, token = authorization.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else b""


def _public(path: str) -> bool:
    return path in ("/health", "/") or path.startswith("/web/")


class UploadLimit:
    """Refuse request bodies over `max_bytes` with 413, before they are buffered, and bodies that come
    too slowly with 408.

    A declared Content-Length over the limit is answered at once; a body without one is counted as it
    arrives and cut off when it passes the limit. After `GRACE_SECONDS`, a body must keep coming at
    `MIN_BYTES_PER_SECOND` on average (a client sending 10 B/s would hold its connection for ever).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = self._error().response()
            response.headers["connection"] = "close"
            await response(scope, receive, send)
            await self._drain(receive, int(declared))
            return
        received, started, done = 0, time.monotonic(), False

        async def counted_receive() -> Message:
            nonlocal received, done
            if done:  # the body is whole: what comes next is the disconnect, whenever it comes
                return await receive()
            deadline = started + max(GRACE_SECONDS, (received + 1) / MIN_BYTES_PER_SECOND)
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise ApiError(408, "The request body comes too slowly.", code="upload_too_slow") from None
            received += len(message.get("body", b""))
            done = not message.get("more_body", False)
            if received > self.max_bytes:
                raise self._error()
            return message

        await self.app(scope, counted_receive, send)

    async def _drain(self, receive: Receive, declared: int) -> None:
        """Read (and drop) the body refused, up to `DRAIN_FACTOR` times the limit: a client sends its whole
        body before it reads the answer, and would see the connection reset instead of the 413."""
        left = min(declared, DRAIN_FACTOR * self.max_bytes)
        while left > 0:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            left -= len(message.get("body", b""))

    def _error(self) -> ApiError:
        limit_mb = self.max_bytes / 1_000_000
        return ApiError(
            413,
            f"The upload is larger than this server's limit of {limit_mb:g} MB.",
            param="file",
            code="file_too_large",
        )


class CancelOnDisconnect:
    """Stop serving a request once its client has gone: its handler is cancelled, and with it whatever
    the handler waits on (the router's upstream request, a family server's queued or running job),
    instead of running to the end for nobody.

    Once the request body has been read, this middleware alone listens for the disconnect; the app's
    own later `receive()` calls (Starlette's streaming responses listen too) get it from here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_read, gone = asyncio.Event(), asyncio.Event()
        answered = False  # the response has been sent whole: a disconnect now is the normal end

        async def app_receive() -> Message:
            if body_read.is_set():
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read.set()
            return message

        async def app_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, app_receive, app_send))

        async def watch() -> None:
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            if not answered:
                handler.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not gone.is_set():
                raise  # this request's own task was cancelled (the server is stopping)
            logger.info("client left before its answer; stopped serving it")
        finally:
            watcher.cancel()


class RequestMetrics:
    """Count and time every HTTP request but `/metrics`, by model, route template and status.

    The model is fixed for a family server (it serves one); the router's handlers name it in
    `request.state.model` once they know it.
    """

    def __init__(self, app: ASGIApp, layer: str, model: str = "") -> None:
        self.app = app
        self.layer = layer
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/metrics":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            model = self.model or scope.get("state", {}).get("model", "")
            metrics.http_request(self.layer, model, _route(scope), status, time.perf_counter() - start)


def _route(scope: Scope) -> str:
    """The matched route's path template; requests answered before routing (401, 413) are matched here."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        route = next((r for r in getattr(app, "routes", ()) if r.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "path", "unmatched")
