"""The audio routes through the router: spool a multipart upload once, reading its small form fields on
the way, and forward it to the family server of its `model`, relaying the answer as it comes.

The router must know the `model` field before it can pick a family server, but the file part may be
large. `spool` reads the body once into a temporary file (in memory up to 1 MB, on disk beyond),
parsing the multipart stream as it goes and keeping only the values of small text fields; the body
is then forwarded byte for byte, streamed from the spool, so an upload is never held twice.

The router talks to family servers with aiohttp rather than httpx: its client spends far less CPU on
each forwarded request (docs/benchmarks.md, "Serving overhead").
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

import aiohttp
from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from common.errors import ApiError
from common.middleware import request_id
from router.openapi import audio_form
from router.registry import Registry
from router.supervisor import Served, Supervisor

logger = logging.getLogger("open_speech.router")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}

SPOOL_IN_MEMORY = 1 << 20
MAX_FIELD_BYTES = 4096  # text fields longer than this are not kept (prompts are forwarded, not read)
MAX_PARTS = 1000  # form fields: OpenAI's form has about twenty (repeated ones included)
MAX_HEADER_BYTES = 8192  # the headers of one part
CHUNK = 1 << 16
# Idle connections to family servers are dropped before uvicorn's own 5 s keep-alive could close one
# under a request being sent.
KEEP_ALIVE = 4.0
PATHS = {
    "transcribe": "/v1/audio/transcriptions",
    "translate": "/v1/audio/translations",
    "diarize": "/v1/audio/diarizations",  # who spoke when (the family servers' diarizer asks it too)
}


@dataclass
class SpooledUpload:
    body: IO[bytes]
    size: int
    content_type: str
    fields: dict[str, str] = field(default_factory=dict)

    async def chunks(self) -> AsyncIterator[bytes]:
        self.body.seek(0)
        while chunk := self.body.read(CHUNK):
            yield chunk

    def close(self) -> None:
        self.body.close()


class Upstream:
    """The router's one aiohttp session to the family servers: made on first use, inside the event loop
    (as aiohttp requires), and closed with the app."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEP_ALIVE),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                auto_decompress=False,  # bytes are relayed as they come
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class Proxy:
    """`/v1/audio/transcriptions` and `/v1/audio/translations`, forwarded by `model` to its family server."""

    def __init__(self, registry: Registry, supervisor: Supervisor, upstream: Upstream) -> None:
        self.registry = registry
        self.supervisor = supervisor
        self.upstream = upstream

    def install(self, app: FastAPI) -> None:
        # The routes read the raw body (forwarded byte for byte): their form is documented by hand.
        for task in ("transcribe", "translate", "diarize"):
            app.add_api_route(PATHS[task], self.forward, methods=["POST"], openapi_extra=audio_form(task))

    async def forward(self, request: Request) -> Response:
        upload = await spool(request)
        try:
            model = upload.fields.get("model")
            if not model:
                raise ApiError(
                    422, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
                )
            entry = self.registry.entry(model, diarizer=request.url.path == PATHS["diarize"])
            request.state.model = entry.id  # the metrics label
            server = await self.supervisor.server_for(entry)
        except BaseException:
            upload.close()
            raise
        server.acquire()
        headers = {
            "content-type": upload.content_type,
            "content-length": str(upload.size),
            "x-request-id": request_id.get(),
            **server.headers,
        }
        try:
            response = await self.upstream.session.post(
                server.url + request.url.path, data=upload.chunks(), headers=headers
            )
        except BaseException as exc:  # failed, or cancelled as the client left (CancelOnDisconnect)
            server.release()
            upload.close()
            if isinstance(exc, aiohttp.ClientError):
                raise server.unavailable(exc) from None
            raise
        headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(self._relay(response, server, upload), status_code=response.status, headers=headers)

    async def _relay(
        self, response: aiohttp.ClientResponse, server: Served, upload: SpooledUpload
    ) -> AsyncIterator[bytes]:
        """The family server's bytes as they arrive; a server that dies mid-stream ends it with an error."""
        try:
            async for chunk in response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            error = server.unavailable(exc)
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                yield f"data: {json.dumps(error.body())}\n\n".encode()
        finally:
            response.release()
            server.release()
            upload.close()


async def spool(request: Request) -> SpooledUpload:
    """Read the request body into a spool, parsing its form fields on the way; 400 unless it is
    well-formed multipart/form-data with one `model` of a sane length."""
    content_type = request.headers.get("content-type", "")
    media_type, params = parse_options_header(content_type)
    boundary = params.get(b"boundary", b"")
    if media_type != b"multipart/form-data" or not boundary:
        raise _bad_form("Send the request as multipart/form-data (with a boundary), as the OpenAI SDK does.")
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 (closed by SpooledUpload.close)
    collector = _FieldCollector()
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    size = 0
    try:
        async for chunk in request.stream():
            body.write(chunk)
            size += len(chunk)
            parser.write(chunk)
        parser.finalize()
        if not collector.ended:
            raise _bad_form("The multipart/form-data body ends before its closing boundary.")
    except MultipartParseError as exc:
        body.close()
        raise _bad_form(f"The multipart/form-data body is malformed ({exc}).") from None
    except BaseException:
        body.close()
        raise
    return SpooledUpload(body, size, content_type, collector.fields)


def _bad_form(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_form")


class _FieldCollector:
    """MultipartParser callbacks that keep the values of small text fields (not of files), and refuse
    what no client sends: more than `MAX_PARTS` parts, part headers over `MAX_HEADER_BYTES`, a `model`
    sent twice or longer than `MAX_FIELD_BYTES` (the family server would read it otherwise than the
    router routed it)."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.parts = 0
        self.ended = False
        self.on_part_begin()

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _bad_form(f"The form has more than {MAX_PARTS} fields.")
        self.header = b""
        self.header_bytes = 0
        self.disposition = b""
        self.data = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        if self.header.lower() == b"content-disposition":
            self.disposition += data[start:end]

    def on_header_end(self) -> None:
        self.header = b""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if len(self.data) <= MAX_FIELD_BYTES:
            self.data += data[start:end]

    def on_part_end(self) -> None:
        _, options = parse_options_header(self.disposition)
        name = options.get(b"name")
        if name is None or b"filename" in options:
            return
        if name == b"model" and ("model" in self.fields or len(self.data) > MAX_FIELD_BYTES):
            why = "is sent twice" if "model" in self.fields else f"is longer than {MAX_FIELD_BYTES} bytes"
            raise _bad_form(f"The form field 'model' {why}.", param="model")
        if len(self.data) <= MAX_FIELD_BYTES:
            self.fields.setdefault(name.decode(errors="replace"), self.data.decode(errors="replace"))

    def on_end(self) -> None:
        self.ended = True

    def _count(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            raise _bad_form(f"A part of the form has headers longer than {MAX_HEADER_BYTES} bytes.")

    def callbacks(self) -> dict[str, object]:
        names = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_part_data")
        return {name: getattr(self, name) for name in (*names, "on_part_end", "on_end")}
