"""The router's model routes: `/v1/models` over the whole registry, and Ollama-style management:
`/api/ps` to list, load and unload family servers, `/api/pull` to download weights."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response, StreamingResponse

from common.errors import ApiError
from common.models import model_object
from router import pull
from router.registry import ModelEntry, Registry
from router.supervisor import Served, Supervisor


class ModelRoutes:
    def __init__(self, registry: Registry, supervisor: Supervisor) -> None:
        self.registry = registry
        self.supervisor = supervisor

    def install(self, app: FastAPI) -> None:
        app.add_api_route("/v1/models", self.list_models, methods=["GET"])
        app.add_api_route("/v1/models/{model:path}", self.get_model, methods=["GET"])
        app.add_api_route("/api/ps", self.ps, methods=["GET"])
        app.add_api_route("/api/ps/{model:path}", self.load_model, methods=["POST"])
        app.add_api_route("/api/ps/{model:path}", self.unload_model, methods=["DELETE"])
        app.add_api_route("/api/pull/{model:path}", self.pull, methods=["POST"])

    # ---- /v1/models ---------------------------------------------------------------------------
    async def list_models(self) -> dict[str, Any]:
        """Every name a client may send, aliases too (clients check that the id they use is listed); an
        alias's `root` is the model it stands for."""
        return {
            "object": "list",
            "data": [self._model_object(e, name) for e in self.registry.models.values() for name in e.names],
        }

    async def get_model(self, model: str) -> dict[str, Any]:
        entry = self.registry.entry(model)
        server = self.supervisor.servers.get(entry.id)
        details = self._model_object(entry, model)
        details["config"] = server.config if server else {"source": entry.source, **entry.options}
        return details

    def _model_object(self, entry: ModelEntry, name: str) -> dict[str, Any]:
        return model_object(
            name,
            entry.family,
            entry.capabilities,
            root=entry.id,
            source=entry.source,
            aliases=list(entry.aliases),
            description=entry.description,
            loaded=entry.id in self.supervisor.servers,
            downloaded=_downloaded(entry),
        )

    # ---- /api/ps ------------------------------------------------------------------------------
    async def ps(self) -> dict[str, Any]:
        await self.supervisor.states()  # probes the external servers
        return {"models": [self._ps_entry(s) for s in self.supervisor.servers.values()]}

    def _ps_entry(self, server: Served) -> dict[str, Any]:
        expires = self.supervisor.expires_at(server)
        return {
            "id": server.entry.id,
            "names": list(server.entry.names),
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
        entry = self.registry.entry(model)
        if entry.id in self.supervisor.loading:
            raise ApiError(409, f"Model '{entry.id}' is already loading.", param="model", code="model_loading")
        return self._ps_entry(await self.supervisor.load(entry))

    async def unload_model(self, model: str) -> dict[str, Any]:
        entry = self.registry.entry(model)
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
