"""What crosses between the API process and the inference workers.

The spec sends a `TranscriptionJob` (decoded PCM plus options); the family's worker answers with a
stream of small JSON events, so every family speaks the same protocol:

    {"event": "info", "language": "en", "duration": 7.2}       once, first
    {"event": "segment", **Segment.to_dict()}                   as text is decoded
    {"event": "error", "status": 400, "message": ..., "code": ...}  instead of the rest
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.transcript import Segment, Task


@dataclass
class TranscriptionJob:
    audio: np.ndarray  # 16 kHz mono float32
    task: Task = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None  # None: the family's default (Whisper: fallback 0.0 … 1.0)
    word_timestamps: bool = False
    stream: bool = False  # the client streams: families that can decode incrementally do so
    options: dict[str, Any] = field(default_factory=dict)  # family-specific extras
    # When the spec made it, just before queueing it (time.monotonic is one clock for all processes).
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def duration(self) -> float:
        return len(self.audio) / 16_000


@dataclass(frozen=True)
class ModelCard:
    """What a served model is and can do; shown by /v1/models and used to validate requests."""

    id: str
    family: str
    aliases: tuple[str, ...] = ()
    languages: tuple[str, ...] | None = None  # None: every language the family knows
    translate: bool = True
    word_timestamps: bool = True
    # Keeps a stream's state between requests (form field `live_id`): cache-aware streaming models,
    # which the router's Realtime WebSocket steps incrementally.
    live: bool = False
    settings: dict[str, Any] = field(default_factory=dict)  # the server's effective configuration

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)


def info_event(language: str, duration: float) -> dict[str, Any]:
    return {"event": "info", "language": language, "duration": duration}


def segment_event(segment: Segment) -> dict[str, Any]:
    return {"event": "segment", **segment.to_dict()}


def error_event(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"event": "error", "status": status, "message": message, "code": code}
