"""The OpenAI audio API as one LitServe spec.

Routes: `POST /v1/audio/transcriptions`, `POST /v1/audio/translations` (multipart, the fields the
`openai` SDK and LiveKit send), `GET /v1/models`, `GET /v1/models/{id}` and `GET /metrics`. The router's
Realtime sessions add two kinds of fields of their own to transcriptions (see `_router_fields`).

Per request, in the API process: validate the form, decode the upload to 16 kHz PCM
(`common.audio`), queue a `TranscriptionJob` for the family's LitAPI, then turn the worker's event
stream (`common.jobs`) into the chosen response format or into Server-Sent Events. Everything that
can fail is checked before the first byte is sent, so errors keep their HTTP status.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus

from common import metrics
from common.audio import AudioError, AudioLimits, decode
from common.errors import ApiError, queue_timeout
from common.formats import RESPONSE_FORMATS, logprobs, render, usage
from common.jobs import ModelCard, TranscriptionJob
from common.languages import LANGUAGES
from common.transcript import Segment, Task, Transcript, join_text

if TYPE_CHECKING:
    from litserve import LitAPI

CREATED = int(time.time())
GRANULARITIES = frozenset({"word", "segment"})


class OpenAIAudioSpec(LitSpec):
    def __init__(self, model: ModelCard, limits: AudioLimits) -> None:
        super().__init__()
        self.api_path = "/v1/audio/transcriptions"
        self.model = model
        self.limits = limits

    @property
    def stream(self) -> bool:
        # Workers always stream events; non-streaming responses are assembled from them here.
        return True

    def pre_setup(self, lit_api: LitAPI) -> None:
        self.add_endpoint("/v1/audio/transcriptions", self.transcriptions, ["POST"])
        self.add_endpoint("/v1/audio/translations", self.translations, ["POST"])
        self.add_endpoint("/v1/models", self.list_models, ["GET"])
        self.add_endpoint("/v1/models/{model_id:path}", self.get_model, ["GET"])
        self.add_endpoint("/metrics", self.prometheus, ["GET"])

    # Worker side: jobs pass through unchanged; each step is one event (or a list, one per batch item).
    def decode_request(self, request: TranscriptionJob, context_kwargs: dict | None = None) -> TranscriptionJob:
        return request

    def encode_response(self, output: Iterator[Any], context_kwargs: dict | None = None) -> Iterator[Any]:
        yield from output

    # ---- routes -------------------------------------------------------------------------------
    async def transcriptions(
        self,
        request: Request,
        file: UploadFile = File(..., description="The audio file: any format ffmpeg reads, or raw pcm16."),
        model: str = Form(..., description="A served model id or alias (see /v1/models)."),
        language: str | None = Form(None, description="ISO-639-1 code of the spoken language; detected if absent."),
        prompt: str | None = Form(None),
        response_format: str = Form("json", description="json, text, srt, vtt or verbose_json."),
        temperature: str | None = Form(None),
        timestamp_granularities: list[str] | None = Form(None, alias="timestamp_granularities[]"),
        stream: str | None = Form(None),
        include: list[str] | None = Form(None, alias="include[]"),
        target_language: str | None = Form(None, description="Models that translate: the output language."),
    ) -> Response:
        return await self._handle(
            request,
            file,
            model,
            "transcribe",
            language,
            prompt,
            response_format,
            temperature,
            timestamp_granularities,
            stream,
            include,
            target_language,
        )

    async def translations(
        self,
        request: Request,
        file: UploadFile = File(...),
        model: str = Form(...),
        prompt: str | None = Form(None),
        response_format: str = Form("json"),
        temperature: str | None = Form(None),
        language: str | None = Form(None, description="Optional hint: the spoken language (output is English)."),
        stream: str | None = Form(None),
        target_language: str | None = Form(None, description="Models that translate: the output language (en)."),
    ) -> Response:
        return await self._handle(
            request,
            file,
            model,
            "translate",
            language,
            prompt,
            response_format,
            temperature,
            None,
            stream,
            None,
            target_language,
        )

    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_entry(name) for name in self.model.names]}

    async def get_model(self, model_id: str) -> dict[str, Any]:
        if model_id not in self.model.names:
            raise _unknown_model(model_id)
        return {**self._model_entry(model_id), "config": self.model.settings}

    async def prometheus(self) -> Response:
        """Prometheus metrics of this server's processes (see `common.metrics`)."""
        return metrics.response()

    # ---- request handling ---------------------------------------------------------------------
    async def _handle(
        self,
        request: Request,
        file: UploadFile,
        model: str,
        task: Task,
        language: str | None,
        prompt: str | None,
        response_format: str,
        temperature: str | None,
        granularities: list[str] | None,
        stream: str | None,
        include: list[str] | None,
        target_language: str | None,
    ) -> Response:
        form = _Form.parse(response_format, temperature, granularities, stream, include, language)
        target = _parse_language(target_language, "target_language")
        if model not in self.model.names:
            raise _unknown_model(model)
        self._check_capabilities("translate" if target else task, form)
        if not self._ready():
            raise ApiError(
                503, "The model is still loading; retry shortly.", code="model_not_ready", headers={"Retry-After": "2"}
            )
        internal = await self._router_fields(request)
        audio = await asyncio.to_thread(self._decode_upload, file, "live" in internal)
        job = TranscriptionJob(
            audio=audio,
            task=task,
            language=form.language,
            prompt=prompt or None,
            temperature=form.temperature,
            word_timestamps="word" in form.granularities or form.logprobs,
            stream=form.stream,
            options=({"target_language": target} if target else {}) | internal,
        )
        events = self._submit(job)
        first = await _next_event(events)  # errors surface here, before any byte is sent
        metrics.audio_processed(self.model.id, task, job.duration)
        if form.stream:
            return StreamingResponse(
                self._sse(first, events, form.logprobs),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        transcript = await _collect(first, events, task)
        body = render(
            transcript, form.response_format, granularities=form.granularities, include_logprobs=form.logprobs
        )
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body)

    async def _router_fields(self, request: Request) -> dict[str, Any]:
        """Job options from the fields the router's Realtime sessions add (not part of OpenAI's API):

        - `interim=true`: the decode is only interim text: a family may trade accuracy for speed;
        - `live_id`, `live_final`: continue (and end) a live stream, on models that keep stream state.
        """
        form = await request.form()  # already parsed for the route: cached

        def flag(name: str) -> bool:
            value = form.get(name)
            return _parse_bool(value if isinstance(value, str) else None, name)

        options: dict[str, Any] = {"interim": True} if flag("interim") else {}
        live_id = form.get("live_id")
        if isinstance(live_id, str):
            if not self.model.live:
                raise ApiError(
                    400, f"Model '{self.model.id}' keeps no live streams.", param="live_id", code="unsupported_value"
                )
            options["live"] = {"id": live_id, "final": flag("live_final")}
        return options

    def _decode_upload(self, file: UploadFile, allow_empty: bool = False) -> Any:
        file.file.seek(0, 2)
        if file.file.tell() == 0:
            if allow_empty:  # a live stream's last request may carry no new audio
                return np.zeros(0, np.float32)
            raise AudioError("The audio file is empty.", code="empty_file")
        file.file.seek(0)
        return decode(file.file, file.content_type, self.limits)

    def _check_capabilities(self, task: Task, form: _Form) -> None:
        card = self.model
        if form.language and card.languages is not None and form.language not in card.languages:
            raise ApiError(
                400,
                f"Model '{card.id}' does not support language '{form.language}'; "
                f"it supports: {', '.join(card.languages)}.",
                param="language",
                code="unsupported_language",
            )
        if task == "translate" and not card.translate:
            raise ApiError(400, f"Model '{card.id}' cannot translate.", param="model", code="unsupported_task")
        if "word" in form.granularities and not card.word_timestamps:
            raise ApiError(
                400,
                f"Model '{card.id}' has no word timestamps.",
                param="timestamp_granularities[]",
                code="unsupported_value",
            )

    def _ready(self) -> bool:
        status = self._server.workers_setup_status if self._server else {}
        return any(v == WorkerSetupStatus.READY for v in status.values())

    def _submit(self, job: TranscriptionJob) -> AsyncIterator[dict[str, Any]]:
        uid = uuid.uuid4()
        queue: deque = deque()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=queue, event=event)
        return self._events(uid, queue, event, job)

    async def _events(
        self, uid: uuid.UUID, queue: deque, event: asyncio.Event, job: TranscriptionJob
    ) -> AsyncIterator[dict[str, Any]]:
        """The worker's events for one job; worker errors become `ApiError`s."""
        depth = metrics.queue_depth(self.model.id)
        depth.inc()
        try:
            # The manager queue's put blocks on IPC: keep it off the event loop.
            await asyncio.to_thread(self.request_queue.put, (self.response_queue_id, uid, time.monotonic(), job))
            async for data, status in self.data_streamer(queue, event, send_status=True):
                if status == LitAPIStatus.ERROR:
                    raise _worker_error(data)
                if not data:
                    continue  # a batch step that had nothing for this request
                message = json.loads(data)
                if message["event"] == "error":
                    if message.get("code") == "queue_timeout":
                        raise queue_timeout()
                    raise ApiError(message["status"], message["message"], code=message.get("code"))
                yield message
        finally:
            depth.dec()
            self.response_buffer.pop(uid, None)

    async def _sse(
        self, first: dict[str, Any], events: AsyncIterator[dict[str, Any]], with_logprobs: bool
    ) -> AsyncIterator[str]:
        """`transcript.text.delta` per decoded segment, then `transcript.text.done`, then `[DONE]`."""
        texts: list[str] = []
        emitted = ""
        duration = first.get("duration", 0.0)
        try:
            async for message in _chain(first, events):
                if message["event"] != "segment":
                    continue
                segment = Segment.from_dict(_segment_fields(message))
                texts.append(segment.text)
                text = join_text(texts)
                delta, emitted = text[len(emitted) :], text
                if delta:
                    payload: dict[str, Any] = {
                        "type": "transcript.text.delta",
                        "delta": delta,
                        "segment_id": str(segment.id),
                    }
                    if with_logprobs:
                        payload["logprobs"] = logprobs(segment.words or [])
                    yield _sse_data(payload)
            yield _sse_data({"type": "transcript.text.done", "text": emitted, "usage": usage(duration)})
        except ApiError as exc:
            yield _sse_data(exc.body())
        yield "data: [DONE]\n\n"

    def _model_entry(self, name: str) -> dict[str, Any]:
        card = self.model
        return {
            "id": name,
            "object": "model",
            "created": CREATED,
            "owned_by": "open-speech",
            "family": card.family,
            "root": card.id,
            "languages": list(card.languages) if card.languages is not None else sorted(LANGUAGES),
            "capabilities": {"translate": card.translate, "stream": True, "word_timestamps": card.word_timestamps},
        }


class _Form:
    """The validated optional fields of a transcription or translation request."""

    def __init__(
        self,
        response_format: str,
        temperature: float | None,
        granularities: frozenset[str],
        stream: bool,
        logprobs: bool,
        language: str | None,
    ) -> None:
        self.response_format = response_format
        self.temperature = temperature
        self.granularities = granularities
        self.stream = stream
        self.logprobs = logprobs
        self.language = language

    @classmethod
    def parse(
        cls,
        response_format: str,
        temperature: str | None,
        granularities: list[str] | None,
        stream: str | None,
        include: list[str] | None,
        language: str | None,
    ) -> _Form:
        if response_format == "diarized_json":
            raise ApiError(
                400,
                "response_format 'diarized_json' needs a diarizing model; none is served here.",
                param="response_format",
                code="unsupported_value",
            )
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(
                400,
                f"Invalid response_format '{response_format}'; expected one of: {', '.join(RESPONSE_FORMATS)}.",
                param="response_format",
                code="invalid_value",
            )
        return cls(
            response_format=response_format,
            temperature=_parse_temperature(temperature),
            granularities=_parse_granularities(granularities),
            stream=_parse_bool(stream, "stream"),
            logprobs="logprobs" in (include or ()),
            language=_parse_language(language),
        )


def _parse_temperature(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        temperature = float(value)
    except ValueError:
        temperature = -1.0
    if not 0.0 <= temperature <= 1.0:
        raise ApiError(
            400,
            f"Invalid temperature '{value}'; expected a number from 0 to 1.",
            param="temperature",
            code="invalid_value",
        )
    return temperature


def _parse_granularities(values: list[str] | None) -> frozenset[str]:
    chosen = frozenset(values or ())
    if chosen - GRANULARITIES:
        raise ApiError(
            400,
            f"Invalid timestamp_granularities {sorted(chosen - GRANULARITIES)}; expected word and/or segment.",
            param="timestamp_granularities[]",
            code="invalid_value",
        )
    return chosen


def _parse_bool(value: str | None, name: str) -> bool:
    if value is None or value.lower() in ("", "false", "0"):
        return False
    if value.lower() in ("true", "1"):
        return True
    raise ApiError(400, f"Invalid {name} '{value}'; expected true or false.", param=name, code="invalid_value")


def _parse_language(value: str | None, param: str = "language") -> str | None:
    if not value:
        return None
    code = value.strip().lower()
    if code not in LANGUAGES:
        raise ApiError(
            400,
            f"Invalid {param} '{value}'; expected an ISO-639-1 code such as 'en'.",
            param=param,
            code="invalid_language",
        )
    return code


def _unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or is not served here; see /v1/models.",
        param="model",
        code="model_not_found",
    )


def _worker_error(data: Any) -> ApiError:
    status = getattr(data, "status_code", 500)
    if status == 504:  # LitServe's batching loops refused a job that waited too long
        return queue_timeout()
    return ApiError(
        status if status < 500 else 500, "The model failed while transcribing this request.", code="model_error"
    )


def _segment_fields(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "event"}


async def _next_event(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    try:
        return await anext(events)
    except StopAsyncIteration:
        raise ApiError(500, "The model returned no result.", code="model_error") from None


async def _chain(first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    yield first
    async for message in rest:
        yield message


async def _collect(first: dict[str, Any], events: AsyncIterator[dict[str, Any]], task: Task) -> Transcript:
    language, duration = first.get("language", ""), first.get("duration", 0.0)
    segments = [Segment.from_dict(_segment_fields(m)) async for m in _chain(first, events) if m["event"] == "segment"]
    return Transcript.from_segments(segments, language, duration, task)


def _sse_data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
