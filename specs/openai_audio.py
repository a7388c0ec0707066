"""The OpenAI audio API as one LitServe spec.

Routes: `POST /v1/audio/transcriptions`, `POST /v1/audio/translations` (multipart, the fields the
`openai` SDK and LiveKit send), `GET /v1/models`, `GET /v1/models/{id}` and `GET /metrics`. The router's
Realtime sessions add fields of their own to transcriptions (see `_Form`).

Per request, in the API process: validate the form, decode the upload to 16 kHz PCM
(`common.audio`), queue a `TranscriptionJob` for the family's LitAPI, then turn the worker's event
stream (`common.jobs`) into the chosen response format or into Server-Sent Events. Everything that
can fail is checked before the first byte is sent, so errors keep their HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Depends, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from common import metrics
from common.audio import AudioLimits
from common.errors import ApiError
from common.formats import RESPONSE_FORMATS, SPEAKER_FORMATS, diarized_segment, render, usage
from common.jobs import LiveStep, TranscriptionJob, parse_keywords
from common.languages import LANGUAGES
from common.models import DIARIZING_MODEL_IDS, ModelCard
from common.speakers import SpeakerSplitter
from common.transcript import Segment, Task, Transcript, join_text
from common.windows import Chunking
from specs.base import ModelSpec
from specs.diarizer import DiarizerClient

if TYPE_CHECKING:
    from litserve import LitAPI

GRANULARITIES = frozenset({"word", "segment"})


async def _shared_fields(
    model: str = Form(..., description="A served model id or alias (see /v1/models)."),
    language: str | None = Form(None, description="ISO-639-1 code of the spoken language; detected if absent."),
    prompt: str | None = Form(None),
    response_format: str = Form("json", description="json, text, srt, vtt, verbose_json or diarized_json."),
    temperature: str | None = Form(None),
    stream: str | None = Form(None),
    target_language: str | None = Form(None, description="Models that translate: the output language."),
) -> dict[str, Any]:
    """The form fields both audio routes take, as sent, by name (a FastAPI dependency of both)."""
    return locals()


class OpenAIAudioSpec(ModelSpec):
    def __init__(
        self, model: ModelCard, limits: AudioLimits, max_queued_seconds: float, diarizer: DiarizerClient | None
    ) -> None:
        super().__init__(model, limits, max_queued_seconds, "transcribing")
        self.api_path = "/v1/audio/transcriptions"
        self.diarizer = diarizer  # who spoke: None where no diarization server is configured

    def pre_setup(self, lit_api: LitAPI) -> None:
        super().pre_setup(lit_api)
        self.add_endpoint("/v1/audio/transcriptions", self.transcriptions, ["POST"])
        self.add_endpoint("/v1/audio/translations", self.translations, ["POST"])

    # ---- routes -------------------------------------------------------------------------------
    async def transcriptions(
        self,
        file: UploadFile = File(..., description="The audio file: any format ffmpeg reads, or raw pcm16."),
        shared: dict[str, Any] = Depends(_shared_fields),
        timestamp_granularities: list[str] | None = Form(None, alias="timestamp_granularities[]"),
        include: list[str] | None = Form(None, alias="include[]"),
        chunking_strategy: str | None = Form(None, description='"auto", or a server_vad object as JSON.'),
        chunking_type: str | None = Form(None, alias="chunking_strategy[type]"),
        chunking_threshold: str | None = Form(None, alias="chunking_strategy[threshold]"),
        chunking_prefix_padding_ms: str | None = Form(None, alias="chunking_strategy[prefix_padding_ms]"),
        chunking_silence_duration_ms: str | None = Form(None, alias="chunking_strategy[silence_duration_ms]"),
        keywords: list[str] | None = Form(None, alias="keywords[]", description="Words and phrases to favour."),
        languages: list[str] | None = Form(
            None, alias="languages[]", description="Candidate ISO-639-1 codes: the language is detected among them."
        ),
        known_speaker_names: list[str] | None = Form(None, alias="known_speaker_names[]"),
        known_speaker_references: list[str] | None = Form(
            None, alias="known_speaker_references[]", description="Data URLs of 2-10 s of each known voice."
        ),
        diarize: str | None = Form(None, description="Speakers in verbose_json, srt and vtt (diarized_json has them)."),
        interim: str | None = Form(None, include_in_schema=False),
        live_id: str | None = Form(None, include_in_schema=False),
        live_final: str | None = Form(None, include_in_schema=False),
    ) -> Response:
        form = _Form.parse(
            task="transcribe",
            **shared,
            granularities=timestamp_granularities,
            include=include,
            chunking=Chunking.parse(
                chunking_strategy,
                {
                    "type": chunking_type,
                    "threshold": chunking_threshold,
                    "prefix_padding_ms": chunking_prefix_padding_ms,
                    "silence_duration_ms": chunking_silence_duration_ms,
                },
            ),
            keywords=keywords,
            languages=languages,
            diarize=diarize,
            known_speaker_names=known_speaker_names,
            known_speaker_references=known_speaker_references,
            interim=interim,
            live_id=live_id,
            live_final=live_final,
        )
        return await self._handle(file, form)

    async def translations(
        self,
        file: UploadFile = File(..., description="The audio file: any format ffmpeg reads, or raw pcm16."),
        shared: dict[str, Any] = Depends(_shared_fields),
    ) -> Response:
        return await self._handle(file, _Form.parse(task="translate", **shared))

    # ---- request handling ---------------------------------------------------------------------
    async def _handle(self, file: UploadFile, form: _Form) -> Response:
        self._check(form.model)
        self._check_capabilities(form)
        candidates = self._candidates(form)
        if form.speakers and self.diarizer is None:
            raise ApiError(
                400,
                "Speakers need a diarizer, and this server has none: send the request through the router, or "
                "start this server with --diarizer-url.",
                param="response_format",
                code="unsupported_value",
            )
        audio = await self._decode_upload(file, form.live is not None)
        words = "word" in form.granularities or (form.speakers and self.model.capabilities.word_timestamps)
        job = TranscriptionJob(
            audio=audio,
            task=form.task,
            language=form.language or (candidates[0] if len(candidates) == 1 else None),
            languages=candidates,
            prompt=form.prompt,
            keywords=form.keywords,
            temperature=form.temperature,
            word_timestamps=words,
            timestamps=form.response_format not in ("json", "text") or words,
            logprobs=form.logprobs,
            stream=form.stream,
            target_language=form.target_language,
            chunking=form.chunking,
            interim=form.interim,
            live=form.live,
        )
        diarizing = self.diarizer.start(audio, *form.known_speakers) if self.diarizer and form.speakers else None
        events = self._events(job)
        try:  # errors surface here, before any byte is sent
            first = await _next_event(events)
            turns = await diarizing if diarizing else None
        except BaseException:
            if diarizing:
                diarizing.cancel()
            await events.aclose()  # ends the job: its audio is deleted, its worker stops
            raise
        metrics.audio_processed(self.model.id, form.task, job.duration)
        splitter = None if turns is None else SpeakerSplitter(turns, form.known_speakers[0])
        if form.stream:
            return StreamingResponse(
                self._sse(first, events, form.logprobs, splitter),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        transcript = await _collect(first, events, form.task)
        if splitter:
            transcript = splitter.transcript(transcript)
        body = render(
            transcript,
            form.response_format,
            granularities=form.granularities,
            include_logprobs=form.logprobs,
            with_languages=bool(form.languages),
        )
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body)

    def _check_capabilities(self, form: _Form) -> None:
        card, able = self.model, self.model.capabilities
        if form.language and able.languages is not None and form.language not in able.languages:
            raise ApiError(
                400,
                f"Model '{card.id}' does not support language '{form.language}'; "
                f"it supports: {', '.join(able.languages)}.",
                param="language",
                code="unsupported_language",
            )
        if (form.task == "translate" or form.target_language) and not able.translate:
            raise ApiError(400, f"Model '{card.id}' cannot translate.", param="model", code="unsupported_task")
        if "word" in form.granularities and not able.word_timestamps:
            raise ApiError(
                400,
                f"Model '{card.id}' has no word timestamps.",
                param="timestamp_granularities[]",
                code="unsupported_value",
            )
        if form.live is not None and not able.live:
            raise ApiError(400, f"Model '{card.id}' keeps no live streams.", param="live_id", code="unsupported_value")

    def _candidates(self, form: _Form) -> tuple[str, ...]:
        """The client's candidate languages (`languages[]`) that the model knows; 400 when it knows none."""
        known = self.model.capabilities.languages
        candidates = tuple(code for code in form.languages if known is None or code in known)
        if form.languages and not candidates:
            raise ApiError(
                400,
                f"Model '{self.model.id}' supports none of languages {list(form.languages)}; "
                f"it supports: {', '.join(known or ())}.",
                param="languages[]",
                code="unsupported_language",
            )
        return candidates

    async def _sse(
        self,
        first: dict[str, Any],
        events: AsyncIterator[dict[str, Any]],
        with_logprobs: bool,
        splitter: SpeakerSplitter | None,
    ) -> AsyncIterator[str]:
        """`transcript.text.delta` per decoded segment, then `transcript.text.done`, then `[DONE]`. With
        speakers, a segment is cut where its speaker changes, and each piece's deltas are followed by its
        `transcript.text.segment`."""
        texts: list[str] = []
        emitted = ""
        duration = first.get("duration", 0.0)
        try:
            async for message in _chain(first, events):
                if message["event"] != "segment":
                    continue
                segment = Segment.from_dict(_segment_fields(message))
                for piece in splitter.split(segment) if splitter else [segment]:
                    texts.append(piece.text)
                    text = join_text(texts)
                    delta, emitted = text[len(emitted) :], text
                    if delta:
                        payload: dict[str, Any] = {
                            "type": "transcript.text.delta",
                            "delta": delta,
                            "segment_id": f"seg_{piece.id}" if splitter else str(piece.id),
                        }
                        if with_logprobs:
                            payload["logprobs"] = [p.to_json() for p in piece.logprobs or ()]
                        yield _sse_data(payload)
                    if splitter:
                        yield _sse_data(diarized_segment(piece))
            yield _sse_data({"type": "transcript.text.done", "text": emitted, "usage": usage(duration)})
        except ApiError as exc:
            yield _sse_data(exc.body())
        yield "data: [DONE]\n\n"


@dataclass(frozen=True)
class _Form:
    """A transcription or translation request's form fields, validated and typed."""

    task: Task
    model: str
    response_format: str
    temperature: float | None
    granularities: frozenset[str]
    stream: bool
    logprobs: bool
    language: str | None
    languages: tuple[str, ...]
    prompt: str | None
    keywords: tuple[str, ...]
    # Who spoke: diarized_json, or diarize=true (or a diarizing model name) with a format that can say it.
    speakers: bool
    known_speakers: tuple[tuple[str, ...], tuple[str, ...]]  # names and their references, as sent
    target_language: str | None
    chunking: Chunking | None
    # The router's Realtime sessions add these fields (not part of OpenAI's API): `interim=true`, the
    # decode is only interim text; `live_id` and `live_final` continue (and end) a live stream.
    interim: bool
    live: LiveStep | None

    @classmethod
    def parse(
        cls,
        *,
        task: Task,
        model: str,
        response_format: str,
        language: str | None = None,
        prompt: str | None = None,
        temperature: str | None = None,
        granularities: list[str] | None = None,
        stream: str | None = None,
        include: list[str] | None = None,
        target_language: str | None = None,
        chunking: Chunking | None = None,
        keywords: list[str] | None = None,
        languages: list[str] | None = None,
        diarize: str | None = None,
        known_speaker_names: list[str] | None = None,
        known_speaker_references: list[str] | None = None,
        interim: str | None = None,
        live_id: str | None = None,
        live_final: str | None = None,
    ) -> _Form:
        if response_format == "diarized_json" and task == "translate":
            raise ApiError(
                400,
                "response_format 'diarized_json' is for transcriptions.",
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
        if language and languages:
            raise ApiError(
                400,
                "Send either language or languages[] (candidates to detect among), not both.",
                param="languages[]",
                code="invalid_value",
            )
        return cls(
            task=task,
            model=model,
            response_format=response_format,
            temperature=_parse_temperature(temperature),
            granularities=_parse_granularities(granularities),
            stream=_parse_bool(stream, "stream"),
            logprobs="logprobs" in (include or ()),
            language=_parse_language(language),
            languages=_parse_languages(languages),
            prompt=prompt or None,
            keywords=parse_keywords(keywords),
            speakers=response_format == "diarized_json"
            or (
                response_format in SPEAKER_FORMATS
                and (_parse_bool(diarize, "diarize") or model in DIARIZING_MODEL_IDS)
                and not interim
            ),
            known_speakers=(tuple(known_speaker_names or ()), tuple(known_speaker_references or ())),
            target_language=_parse_language(target_language, "target_language"),
            chunking=chunking,
            interim=_parse_bool(interim, "interim"),
            live=None if live_id is None else LiveStep(live_id, _parse_bool(live_final, "live_final")),
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
    return _language_code(value, param) if value else None


def _language_code(value: str, param: str) -> str:
    code = value.strip().lower()
    if code not in LANGUAGES:
        raise ApiError(
            400,
            f"Invalid {param} '{value}'; expected an ISO-639-1 code such as 'en'.",
            param=param,
            code="invalid_language",
        )
    return code


def _parse_languages(values: list[str] | None) -> tuple[str, ...]:
    """Candidate languages, each an ISO-639-1 code, in the client's order without repeats."""
    return tuple(dict.fromkeys(_language_code(value, "languages[]") for value in values or ()))


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
