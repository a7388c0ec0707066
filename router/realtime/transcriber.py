"""Realtime decodes on the family servers: which decoder a session's items get, and when their requests
go out. Final transcripts come first (see `FamilyTranscriber.transcribe`)."""

from __future__ import annotations

import functools
from collections import Counter

import aiohttp
import numpy as np

from common.errors import ApiError
from common.middleware import request_id
from router.proxy import Upstream
from router.realtime.protocol import SessionConfig
from router.realtime.recognizers import Busy, Decoded, Incremental, ItemDecoder, Redecode, Request
from router.realtime.session import DecoderFactory
from router.registry import ModelEntry, Registry
from router.supervisor import Supervisor

LOGPROBS = "item.input_audio_transcription.logprobs"  # in a session's `include`: finals carry logprobs


class FamilyTranscriber:
    def __init__(
        self, registry: Registry, supervisor: Supervisor, upstream: Upstream, interim_concurrency: int
    ) -> None:
        self.registry = registry
        self.supervisor = supervisor
        self.upstream = upstream
        self.interim_concurrency = interim_concurrency
        self.running: Counter[tuple[str, str]] = Counter()  # realtime decodes by (model, final|interim)

    def decoders(self, model: str | None) -> DecoderFactory:
        """How items of a session on `model` are transcribed (raises ApiError for an unknown model).

        The model starts loading now, so that it is ready by the time the session's first turn ends.
        """
        entry = self.registry.entry(model or self.registry.default, diarizer=False)
        self.supervisor.load_in_background(entry)

        async def decoder(config: SessionConfig) -> ItemDecoder:
            server = await self.supervisor.server_for(entry)
            transcribe = functools.partial(self.transcribe, entry, config)
            # Cache-aware models keep a live stream in their worker; the others re-decode the turn.
            return Incremental(transcribe) if server.config.get("cache_aware") else Redecode(transcribe)

        return decoder

    async def transcribe(self, entry: ModelEntry, config: SessionConfig, request: Request) -> Decoded:
        """One realtime decode on the model's family server: raw pcm16 16 kHz in, the text out.

        Final transcripts come first: an interim re-decode is not sent (`Busy`) while a final one of the
        same model is running, or when `interim_concurrency` interim ones already are, so that a turn's
        final transcript does not queue behind other sessions' interim text.
        """
        interim = not request.final and not request.live_id  # a live step carries audio: never skipped
        running = self.running
        if interim and (running[entry.id, "final"] or running[entry.id, "interim"] >= self.interim_concurrency):
            raise Busy
        kind = "interim" if interim else "final"
        running[entry.id, kind] += 1
        try:
            return await self._post(entry, config, request)
        finally:
            running[entry.id, kind] -= 1

    async def _post(self, entry: ModelEntry, config: SessionConfig, request: Request) -> Decoded:
        server = await self.supervisor.server_for(entry)
        pcm = np.clip(request.audio * 32768, -32768, 32767).astype("<i2").tobytes()  # the inverse of s16 / 32768
        form = aiohttp.FormData({"model": entry.id, "response_format": "json"})
        if config.language:
            form.add_field("language", config.language)
        if config.prompt:
            form.add_field("prompt", config.prompt)
        for keyword in config.keywords:
            form.add_field("keywords[]", keyword)
        logprobs = request.final and LOGPROBS in config.include
        if logprobs:
            form.add_field("include[]", "logprobs")
        if not request.final:
            form.add_fields(("temperature", "0"), ("interim", "true"))  # interim text: no fallback, the fastest
        if request.live_id:
            form.add_fields(("live_id", request.live_id), ("live_final", str(request.final).lower()))
        form.add_field("file", pcm, filename="audio.pcm", content_type="audio/pcm;rate=16000")
        server.acquire()
        try:
            async with self.upstream.session.post(
                server.url + "/v1/audio/transcriptions",
                data=form,
                headers={"x-request-id": request_id.get(), **server.headers},
            ) as response:
                status, body = response.status, await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise server.unavailable(exc) from None
        finally:
            server.release()
        if status != 200:
            error = body.get("error", {})
            raise ApiError(status, error.get("message", "Transcription failed."), code=error.get("code"))
        return Decoded(body["text"], body.get("logprobs") if logprobs else None)
