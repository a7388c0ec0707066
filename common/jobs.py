"""What crosses between the API process and the inference workers.

The spec sends a `TranscriptionJob` (decoded PCM plus typed options); the family's worker answers with
a stream of small JSON events, so every family speaks the same protocol:

    {"event": "info", "language": "en", "duration": 7.2}       once, first
    {"event": "segment", **Segment.to_dict()}                   as text is decoded
    {"event": "error", "status": 400, "message": ..., ...}      instead of the rest (an `ApiError`)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from common.audio import Audio
from common.errors import ApiError
from common.transcript import Segment, Task
from common.windows import Chunking

MAX_KEYWORDS = 100
MAX_KEYWORD_CHARS = 100


@dataclass(frozen=True)
class LiveStep:
    """A request that continues a live stream the model worker keeps between requests (cache-aware
    models, stepped by the router's Realtime sessions): the stream's id, and whether this step ends it."""

    id: str
    final: bool = False


@dataclass
class TranscriptionJob:
    audio: Audio  # 16 kHz mono PCM in a file; windows are read from it
    task: Task = "transcribe"
    language: str | None = None
    # Candidate languages (`languages[]`): the spoken language is detected among these only.
    languages: tuple[str, ...] = ()
    prompt: str | None = None
    keywords: tuple[str, ...] = ()  # words and phrases to favour (`keywords[]`: names, jargon)
    temperature: float | None = None  # None: the family's default (Whisper: fallback 0.0 … 1.0)
    word_timestamps: bool = False
    # Segment times are wanted (verbose_json, srt, vtt, words): a family that spends time computing them
    # (NeMo) may skip them when only the text is (json, text).
    timestamps: bool = True
    logprobs: bool = False  # segments carry `Logprob`s (`include[]=logprobs`)
    stream: bool = False  # the client streams: families that can decode incrementally do so
    target_language: str | None = None  # models that translate into several languages (Canary)
    interim: bool = False  # only a Realtime turn's interim text: a family may trade accuracy for speed
    live: LiveStep | None = None
    chunking: Chunking | None = None  # how long audio is cut into windows (None: the family's default)
    # When the spec made it, just before queueing it (time.monotonic is one clock for all processes).
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def duration(self) -> float:
        return self.audio.duration


def info_event(language: str, duration: float) -> dict[str, Any]:
    return {"event": "info", "language": language, "duration": duration}


def segment_event(segment: Segment) -> dict[str, Any]:
    return {"event": "segment", **segment.to_dict()}


def error_event(error: ApiError) -> dict[str, Any]:
    """The event that ends a job with `error`; the spec raises it again in the API process."""
    return {"event": "error", **error.fields()}


def read_error(event: dict[str, Any]) -> ApiError:
    """The `ApiError` an error event carries."""
    return ApiError(**{key: value for key, value in event.items() if key != "event"})


def parse_keywords(values: list[str] | None, param: str = "keywords[]") -> tuple[str, ...]:
    """OpenAI's rule: each keyword a single-line literal without `<` or `>`; one bad keyword fails the
    request. Also bounded here (`MAX_KEYWORDS` of at most `MAX_KEYWORD_CHARS`), so a request cannot make
    the decoder's prompt or boosting graph as large as it likes."""
    keywords = tuple(dict.fromkeys(value.strip() for value in values or ()))
    if len(keywords) > MAX_KEYWORDS:
        raise ApiError(
            400, f"Too many keywords ({len(keywords)}); at most {MAX_KEYWORDS}.", param=param, code="invalid_value"
        )
    for keyword in keywords:
        if not keyword or len(keyword) > MAX_KEYWORD_CHARS or any(c in "<>" or not c.isprintable() for c in keyword):
            raise ApiError(
                400,
                f"Invalid keyword {keyword!r}: each must be 1 to {MAX_KEYWORD_CHARS} characters on one line, "
                "without '<', '>' or control characters.",
                param=param,
                code="invalid_value",
            )
    return keywords
