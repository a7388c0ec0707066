"""The router: one endpoint for every model. `python servers/router.py [--option value ...]`.

Clients talk only to the router. It proxies `/v1/audio/transcriptions` and `/v1/audio/translations`
by the `model` form field to the family server that serves that model (streaming SSE through as it
arrives), lists the registry at `/v1/models`, and manages models in Ollama's style: `/api/ps` to list,
load and unload family server processes, `/api/pull` to download weights. Options come from
configs/router.yaml, OPEN_SPEECH_* variables and the command line (see `common.config`).
"""

from __future__ import annotations

if __name__ == "__main__" and __spec__ is None:  # run as a script: run as the module instead
    from servers import run_as_module

    run_as_module(__file__)

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from common import metrics, scratch
from common.config import ListenConfig, load
from common.errors import install_error_handlers
from common.http import HeaderDeadline
from common.middleware import (
    BearerAuth,
    CancelOnDisconnect,
    RedactSecrets,
    RequestId,
    RequestIdFilter,
    RequestMetrics,
    TrustedRequests,
    UploadLimit,
)
from router.models import ModelRoutes
from router.proxy import Proxy, Upstream
from router.realtime.endpoint import RealtimeEndpoint
from router.realtime.session import Limits
from router.realtime.transcriber import FamilyTranscriber
from router.registry import REPO, WEB, Registry
from router.supervisor import Supervisor


@dataclass
class RouterConfig(ListenConfig):
    registry: str = "configs/models.yaml"
    preload_default: bool = True
    keep_alive: float = 300.0
    load_on_request: str = "wait"
    load_timeout: float = 600.0
    hang_seconds: float = 20.0
    family_api_key: str = ""
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)
    realtime_sessions_per_key: int = 32
    realtime_max_session_seconds: float = 3600.0
    realtime_max_item_seconds: float = 60.0
    realtime_interim_seconds: float = 0.5
    realtime_interim_concurrency: int = 1


class Router:
    """The router's parts, wired into one app."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.registry = Registry.load(REPO / config.registry)  # relative paths: from the repository root
        self.supervisor = Supervisor(
            self.registry,
            config.keep_alive,
            config.load_timeout,
            config.load_on_request,
            config.family_api_key,
            config.hang_seconds,
            self._diarizer_env(),
        )
        self.upstream = Upstream()  # the audio routes' and Realtime's connections to family servers

    def _diarizer_env(self) -> dict[str, str]:
        """Family servers send the audio of transcriptions with speakers back here, for the registry's
        diarizer (loaded on demand like any model); without one, they refuse such requests."""
        if not self.registry.diarizer:
            return {}
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "::", "") else self.config.host
        return {
            "OPEN_SPEECH_DIARIZER_URL": f"http://{host}:{self.config.port}",
            "OPEN_SPEECH_DIARIZER": self.registry.diarizer,
            "OPEN_SPEECH_DIARIZER_KEY": self.config.api_key,
        }

    def app(self) -> FastAPI:
        c = self.config
        app = FastAPI(title="open-speech router", lifespan=self.lifespan)
        install_error_handlers(app)
        app.add_api_route("/health", self.health, methods=["GET"])
        Proxy(self.registry, self.supervisor, self.upstream).install(app)
        ModelRoutes(self.registry, self.supervisor).install(app)
        transcriber = FamilyTranscriber(self.registry, self.supervisor, self.upstream, c.realtime_interim_concurrency)
        limits = Limits(c.realtime_max_session_seconds, c.realtime_max_item_seconds, c.realtime_interim_seconds)
        endpoint = RealtimeEndpoint(
            transcriber.decoders, self.registry.default, c.api_key, c.realtime_sessions_per_key, limits
        )
        app.add_api_websocket_route("/v1/realtime", endpoint)
        app.add_api_route("/metrics", self.prometheus, methods=["GET"], include_in_schema=False)
        app.add_api_route("/", self.page, methods=["GET"], include_in_schema=False)
        app.mount("/web", StaticFiles(directory=WEB), name="web")
        app.add_middleware(UploadLimit, max_bytes=int(c.max_upload_mb * 1_000_000))
        if c.api_key:
            app.add_middleware(BearerAuth, key=c.api_key)
        if c.cors_origins:
            app.add_middleware(
                CORSMiddleware,
                allow_origins=c.cors_origins,
                allow_methods=["*"],
                allow_headers=["*"],
                expose_headers=["x-request-id"],
            )
        app.add_middleware(TrustedRequests, hosts=[*c.allowed_hosts, c.host], origins=c.cors_origins)
        app.add_middleware(CancelOnDisconnect)
        app.add_middleware(RequestId)
        app.add_middleware(RequestMetrics, layer="router")
        return app

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        scratch.sweep()
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
            await self.upstream.close()
            metrics.cleanup()

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


def main(argv: list[str] | None = None) -> None:
    config = load(RouterConfig, "router", argv)
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    for name in ("uvicorn.access", "uvicorn.error"):  # uvicorn's request lines (WebSocket ones included)
        logging.getLogger(name).addFilter(RedactSecrets())
    app = Router(config).app()
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        timeout_graceful_shutdown=30,
        http=HeaderDeadline,
        limit_concurrency=config.max_connections,
    )


if __name__ == "__main__":
    main()
