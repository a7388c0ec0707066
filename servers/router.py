"""The router: one endpoint for every model. `python servers/router.py [--option value ...]`.

Clients talk only to the router. It proxies `/v1/audio/transcriptions` and `/v1/audio/translations`
by the `model` form field to the family server that serves that model (streaming SSE through as it
arrives), lists the registry at `/v1/models`, and manages models in Ollama's style: `/api/ps` to list,
load and unload family server processes, `/api/pull` to download weights. Options come from
configs/router.yaml, OPEN_SPEECH_* variables and the command line (see `common.config`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles

from common import metrics
from common.config import load
from common.errors import ApiError, install_error_handlers
from common.languages import LANGUAGES
from common.middleware import BearerAuth, RequestId, RequestIdFilter, RequestMetrics, UploadLimit, request_id
from router import pull
from router.openapi import audio_form
from router.proxy import SpooledUpload, spool
from router.realtime.endpoint import RealtimeEndpoint
from router.realtime.protocol import SessionConfig
from router.realtime.recognizers import Busy, Incremental, ItemDecoder, Redecode
from router.realtime.recognizers import Request as RealtimeRequest
from router.realtime.session import DecoderFactory, Limits
from router.registry import REPO, WEB, ModelEntry, Registry
from router.supervisor import ModelServer, Supervisor

logger = logging.getLogger("open_speech.router")
CREATED = int(time.time())
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "date", "server"}


@dataclass
class RouterConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    registry: str = "configs/models.yaml"
    preload_default: bool = True
    keep_alive: float = 300.0
    load_on_request: str = "wait"
    load_timeout: float = 600.0
    api_key: str = ""
    cors_origins: list[str] = field(default_factory=list)
    max_upload_mb: float = 100.0
    realtime_sessions_per_key: int = 32
    realtime_max_session_seconds: float = 3600.0
    realtime_max_item_seconds: float = 60.0
    realtime_interim_seconds: float = 0.5
    realtime_interim_concurrency: int = 1
    log_level: str = "info"


class Router:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.registry = Registry.load(REPO / config.registry)  # relative paths: from the repository root
        self.supervisor = Supervisor(self.registry, config.keep_alive, config.load_timeout)
        self.realtime_running: Counter[tuple[str, str]] = Counter()  # realtime decodes by (model, final|interim)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5), limits=httpx.Limits(max_connections=None))

    def app(self) -> FastAPI:
        app = FastAPI(title="open-speech router", lifespan=self.lifespan)
        install_error_handlers(app)
        app.add_api_route("/health", self.health, methods=["GET"])
        # The audio routes read the raw body (forwarded byte for byte): their form is documented by hand.
        app.add_api_route(
            "/v1/audio/transcriptions", self.transcriptions, methods=["POST"], openapi_extra=audio_form("transcribe")
        )
        app.add_api_route(
            "/v1/audio/translations", self.translations, methods=["POST"], openapi_extra=audio_form("translate")
        )
        app.add_api_route("/v1/models", self.list_models, methods=["GET"])
        app.add_api_route("/v1/models/{model:path}", self.get_model, methods=["GET"])
        app.add_api_route("/api/ps", self.ps, methods=["GET"])
        app.add_api_route("/api/ps/{model:path}", self.load_model, methods=["POST"])
        app.add_api_route("/api/ps/{model:path}", self.unload_model, methods=["DELETE"])
        app.add_api_route("/api/pull/{model:path}", self.pull, methods=["POST"])
        app.add_api_websocket_route("/v1/realtime", self.realtime_endpoint())
        app.add_api_route("/metrics", self.prometheus, methods=["GET"], include_in_schema=False)
        app.add_api_route("/", self.page, methods=["GET"], include_in_schema=False)
        app.mount("/web", StaticFiles(directory=WEB), name="web")
        app.add_middleware(UploadLimit, max_bytes=int(self.config.max_upload_mb * 1_000_000))
        if self.config.api_key:
            app.add_middleware(BearerAuth, key=self.config.api_key)
        if self.config.cors_origins:
            app.add_middleware(
                CORSMiddleware,
                allow_origins=self.config.cors_origins,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=["x-request-id"],
            )
        app.add_middleware(RequestId)
        app.add_middleware(RequestMetrics, layer="router")
        return app

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        metrics.setup("router")  # before any family server starts: theirs go below the router's directory
        expiry = asyncio.create_task(self.supervisor.expire_idle())
        default = self.registry.models[self.registry.default]
        if self.config.preload_default and not default.external:  # an external default is not ours to start
            await self.supervisor.load(default)
        try:
            yield
        finally:
            expiry.cancel()
            await self.supervisor.shutdown()
            await self.http.aclose()
            metrics.cleanup()

    # ---- the page, health, metrics and models ---------------------------------------------------
    async def page(self) -> FileResponse:
        """The web page: upload, live microphone, models (router/web/; it asks for the API key itself)."""
        return FileResponse(WEB / "index.html")

    async def health(self) -> dict[str, Any]:
        """The router is alive; `models` tells which loaded (or external) models are ready."""
        return {"status": "ok", "models": await self.supervisor.states()}

    async def prometheus(self) -> Response:
        """Prometheus metrics of the router and of every family server it started (see `common.metrics`)."""
        models = [
            metrics.LoadedModel(s.entry.id, s.entry.family, s.status, s.in_flight)
            for s in self.supervisor.servers.values()
        ]
        models += [metrics.LoadedModel(m, self.registry.models[m].family, "loading") for m in self.supervisor.loading]
        return metrics.response(models)

    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_entry(e) for e in self.registry.models.values()]}

    async def get_model(self, model: str) -> dict[str, Any]:
        entry = self._entry(model)
        server = self.supervisor.servers.get(entry.id)
        details = self._model_entry(entry)
        details["config"] = server.config if server else {"source": entry.source, **entry.options}
        return details

    def _model_entry(self, entry: ModelEntry) -> dict[str, Any]:
        return {
            "id": entry.id,
            "object": "model",
            "created": CREATED,
            "owned_by": "open-speech",
            "family": entry.family,
            "source": entry.source,
            "aliases": list(entry.aliases),
            "description": entry.description,
            "loaded": entry.id in self.supervisor.servers,
            "downloaded": _downloaded(entry),
            "languages": list(entry.languages) if entry.languages is not None else sorted(LANGUAGES),
            "capabilities": {
                "translate": entry.translate,
                "stream": entry.stream,
                "word_timestamps": entry.word_timestamps,
            },
        }

    def _entry(self, model: str) -> ModelEntry:
        entry = self.registry.resolve(model)
        if entry is None:
            raise ApiError(
                404, f"The model '{model}' does not exist; see /v1/models.", param="model", code="model_not_found"
            )
        return entry

    # ---- /api/ps ------------------------------------------------------------------------------
    async def ps(self) -> dict[str, Any]:
        await self.supervisor.states()  # probes the external servers
        return {"models": [self._ps_entry(s) for s in self.supervisor.servers.values()]}

    def _ps_entry(self, server: ModelServer) -> dict[str, Any]:
        expires = self.supervisor.expires_at(server)
        return {
            "id": server.entry.id,
            "family": server.entry.family,
            "pid": server.pid,
            "port": server.port,
            "url": server.url,
            "status": server.status,
            "device": server.config.get("device", server.entry.options.get("device", "auto")),
            "memory": server.memory(),
            "in_flight": server.in_flight,
            "loaded_at": _iso(server.loaded_at),
            "expires_at": _iso(expires) if expires is not None else None,
        }

    async def load_model(self, model: str) -> dict[str, Any]:
        entry = self._entry(model)
        if entry.id in self.supervisor.loading:
            raise ApiError(409, f"Model '{entry.id}' is already loading.", param="model", code="model_loading")
        return self._ps_entry(await self.supervisor.load(entry))

    async def unload_model(self, model: str) -> dict[str, Any]:
        entry = self._entry(model)
        if not await self.supervisor.unload(entry.id):
            raise ApiError(404, f"Model '{entry.id}' is not loaded.", param="model", code="model_not_loaded")
        return {"id": entry.id, "status": "unloaded"}

    # ---- /api/pull ----------------------------------------------------------------------------
    async def pull(self, model: str) -> Response:
        """Download a registry model (or any `owner/name` hub repo) into the HF cache; NDJSON progress.

        The manifest is fetched before the response starts, so an unknown repository or an unreachable
        hub keeps its HTTP status (404, 502); a failure during the download ends the stream with an
        `{"status": "error"}` line.
        """
        entry = self.registry.resolve(model)
        if entry is not None and not entry.is_hub_repo:
            return _ndjson_response([{"status": "success"}], _empty())
        repo_id = entry.source if entry is not None else model
        try:
            events = _in_thread(pull.pull(repo_id))
            first = [await anext(events)]
            if first[0]["status"] == "pulling manifest":
                first.append(await anext(events))
        except pull.PullError as exc:
            raise ApiError(exc.status, exc.message, param="model", code="pull_failed") from None
        return _ndjson_response(first, events)

    # ---- the realtime WebSocket -----------------------------------------------------------------
    def realtime_endpoint(self) -> RealtimeEndpoint:
        c = self.config
        limits = Limits(c.realtime_max_session_seconds, c.realtime_max_item_seconds, c.realtime_interim_seconds)
        return RealtimeEndpoint(self._decoders, self.registry.default, c.api_key, c.realtime_sessions_per_key, limits)

    def _decoders(self, model: str | None) -> DecoderFactory:
        """How items of a session on `model` are transcribed (raises ApiError for an unknown model).

        The model starts loading now, so that it is ready by the time the session's first turn ends.
        """
        entry = self._entry(model or self.registry.default)
        self.supervisor.load_in_background(entry)

        async def decoder(config: SessionConfig) -> ItemDecoder:
            server = await self._server_for(entry)
            transcribe = functools.partial(self._realtime_transcribe, entry, config)
            # Cache-aware models keep a live stream in their worker; the others re-decode the turn.
            return Incremental(transcribe) if server.config.get("cache_aware") else Redecode(transcribe)

        return decoder

    async def _realtime_transcribe(self, entry: ModelEntry, config: SessionConfig, request: RealtimeRequest) -> str:
        """One realtime decode on the model's family server: raw pcm16 16 kHz in, the text out.

        Final transcripts come first: an interim re-decode is not sent (`Busy`) while a final one of the
        same model is running, or when `realtime_interim_concurrency` interim ones already are, so that
        a turn's final transcript does not queue behind other sessions' interim text.
        """
        interim = not request.final and not request.live_id  # a live step carries audio: never skipped
        running = self.realtime_running
        if interim and (
            running[entry.id, "final"] or running[entry.id, "interim"] >= self.config.realtime_interim_concurrency
        ):
            raise Busy
        kind = "interim" if interim else "final"
        running[entry.id, kind] += 1
        try:
            return await self._realtime_post(entry, config, request)
        finally:
            running[entry.id, kind] -= 1

    async def _realtime_post(self, entry: ModelEntry, config: SessionConfig, request: RealtimeRequest) -> str:
        server = await self._server_for(entry)
        pcm = np.clip(request.audio * 32768, -32768, 32767).astype("<i2").tobytes()  # the inverse of s16 / 32768
        form = {"model": entry.id, "response_format": "json"}
        if config.language:
            form["language"] = config.language
        if config.prompt:
            form["prompt"] = config.prompt
        if not request.final:
            form |= {"temperature": "0", "interim": "true"}  # interim text: no fallback, the family's fastest
        if request.live_id:
            form |= {"live_id": request.live_id, "live_final": str(request.final).lower()}
        server.acquire()
        try:
            response = await self.http.post(
                server.url + "/v1/audio/transcriptions",
                data=form,
                files={"file": ("audio.pcm", pcm, "audio/pcm;rate=16000")},
                headers={"x-request-id": request_id.get()},
            )
        except httpx.TransportError as exc:
            raise self._unavailable(server, exc) from None
        finally:
            server.release()
        body = response.json()
        if response.status_code != 200:
            error = body.get("error", {})
            raise ApiError(response.status_code, error.get("message", "Transcription failed."), code=error.get("code"))
        return body["text"]

    # ---- the audio routes ---------------------------------------------------------------------
    async def transcriptions(self, request: Request) -> Response:
        return await self._proxy(request, "/v1/audio/transcriptions")

    async def translations(self, request: Request) -> Response:
        return await self._proxy(request, "/v1/audio/translations")

    async def _proxy(self, request: Request, path: str) -> Response:
        upload = await spool(request)
        try:
            model = upload.fields.get("model")
            if not model:
                raise ApiError(
                    422, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
                )
            entry = self._entry(model)
            request.state.model = entry.id  # the metrics label
            server = await self._server_for(entry)
        except BaseException:
            upload.close()
            raise
        server.acquire()
        try:
            response = await self.http.send(self._forward(request, server, path, upload), stream=True)
        except httpx.TransportError as exc:
            server.release()
            upload.close()
            raise self._unavailable(server, exc) from None
        headers = {k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            self._relay(response, server, upload),
            status_code=response.status_code,
            headers=headers,
        )

    async def _server_for(self, entry: ModelEntry) -> ModelServer:
        server = self.supervisor.servers.get(entry.id)
        if server is not None and server.alive and not server.stopping:
            return server
        if self.config.load_on_request == "reject":
            self.supervisor.load_in_background(entry)
            raise ApiError(
                503,
                f"Model '{entry.id}' is loading; retry shortly.",
                code="model_loading",
                headers={"Retry-After": "10"},
            )
        return await self.supervisor.load(entry)

    def _forward(self, request: Request, server: ModelServer, path: str, upload: SpooledUpload) -> httpx.Request:
        headers = {
            "content-type": upload.content_type,
            "content-length": str(upload.size),
            "x-request-id": request_id.get(),
        }
        return self.http.build_request("POST", server.url + path, content=upload.chunks(), headers=headers)

    async def _relay(
        self, response: httpx.Response, server: ModelServer, upload: SpooledUpload
    ) -> AsyncIterator[bytes]:
        """The family server's bytes as they arrive; a server that dies mid-stream ends it with an error."""
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            error = self._unavailable(server, exc)
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                yield f"data: {json.dumps(error.body())}\n\n".encode()
            logger.error("%s", error.message)
        finally:
            await response.aclose()
            server.release()
            upload.close()

    def _unavailable(self, server: ModelServer, exc: Exception) -> ApiError:
        logger.error("model server %s failed during a request: %r", server.entry.id, exc)
        return ApiError(
            503,
            server.unavailable_message,
            code="model_unavailable",
            headers={"Retry-After": "1"},
        )


def _downloaded(entry: ModelEntry) -> bool:
    if entry.source == "bundled":
        return True
    if not entry.is_hub_repo:
        return Path(entry.source).exists()
    return pull.is_cached(entry.source)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


async def _empty() -> AsyncIterator[dict[str, Any]]:
    return
    yield


async def _in_thread(iterator: Iterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """Drive a blocking iterator (huggingface_hub downloads) in a thread, one item at a time."""
    done = object()
    while (item := await asyncio.to_thread(next, iterator, done)) is not done:
        yield item


def _ndjson_response(first: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        for item in first:
            yield (json.dumps(item) + "\n").encode()
        try:
            async for item in rest:
                yield (json.dumps(item) + "\n").encode()
        except pull.PullError as exc:
            yield (json.dumps({"status": "error", "error": exc.message, "code": exc.status}) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def main(argv: list[str] | None = None) -> None:
    config = load(RouterConfig, "router", argv)
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    app = Router(config).app()
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
