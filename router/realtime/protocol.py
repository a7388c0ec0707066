"""The session a client configures and the events the server sends, in the GA or the beta shape.

GA clients send `session.update` with `session.audio.input.{format, transcription, turn_detection,
noise_reduction}`; beta clients send `transcription_session.update` with `input_audio_format`,
`input_audio_transcription`, `turn_detection`, `input_audio_noise_reduction`. Both are read into one
`SessionConfig`, and the server answers in the shape the client used. Fields we do not know or do not
support are ignored, never answered with an `error` event (LiveKit treats any error as fatal).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from common.errors import ApiError
from common.jobs import parse_keywords
from router.realtime.audio import InputFormat
from router.realtime.vad import TurnDetection

Shape = Literal["ga", "beta"]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class SessionConfig:
    id: str = field(default_factory=lambda: new_id("sess"))
    shape: Shape = "ga"
    input_format: InputFormat = field(default_factory=InputFormat)
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    keywords: tuple[str, ...] = ()
    delay: str | None = None  # live transcription's latency choice: echoed (interim text comes every `interim_seconds`)
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    noise_reduction: Any = None  # echoed back; audio is not denoised
    include: tuple[str, ...] = ()

    def updated(self, event: dict[str, Any]) -> SessionConfig:
        """This config with a `session.update` / `transcription_session.update` applied; `ApiError` for
        invalid keywords, which reject the whole update, as OpenAI's."""
        session = event.get("session")
        if not isinstance(session, dict):
            return self
        if event.get("type") == "transcription_session.update":
            return self._beta(session)
        audio = _dict(_dict(session.get("audio")).get("input"))
        new = replace(self, shape="ga")
        if isinstance(audio.get("format"), dict):
            new = replace(new, input_format=InputFormat.from_ga(audio["format"]) or new.input_format)
        if "transcription" in audio:
            new = new._transcription(_dict(audio["transcription"]))
        if "turn_detection" in audio:
            new = replace(new, turn_detection=_turn_detection(audio["turn_detection"], self.turn_detection))
        if "noise_reduction" in audio:
            new = replace(new, noise_reduction=audio["noise_reduction"])
        return new._include(session)

    def _beta(self, session: dict[str, Any]) -> SessionConfig:
        new = replace(self, shape="beta")
        if isinstance(session.get("input_audio_format"), str):
            new = replace(new, input_format=InputFormat.from_beta(session["input_audio_format"]) or new.input_format)
        if "input_audio_transcription" in session:
            new = new._transcription(_dict(session["input_audio_transcription"]))
        if "turn_detection" in session:
            new = replace(new, turn_detection=_turn_detection(session["turn_detection"], self.turn_detection))
        if "input_audio_noise_reduction" in session:
            new = replace(new, noise_reduction=session["input_audio_noise_reduction"])
        return new._include(session)

    def _transcription(self, value: dict[str, Any]) -> SessionConfig:
        return replace(
            self,
            model=_text(value.get("model")) or self.model,
            language=_text(value.get("language")) if "language" in value else self.language,
            prompt=_text(value.get("prompt")) if "prompt" in value else self.prompt,
            keywords=_keywords(value["keywords"]) if "keywords" in value else self.keywords,
            delay=_text(value.get("delay")) if "delay" in value else self.delay,
        )

    def _include(self, session: dict[str, Any]) -> SessionConfig:
        include = session.get("include")
        if isinstance(include, list):
            return replace(self, include=tuple(str(i) for i in include))
        return self

    # ---- what the server says back ----------------------------------------------------------
    def render(self) -> dict[str, Any]:
        transcription = {
            "model": self.model,
            "language": self.language,
            "prompt": self.prompt or "",
            "keywords": list(self.keywords),
            **({"delay": self.delay} if self.delay else {}),
        }
        turn = self.turn_detection
        turn_detection = (
            None
            if turn is None
            else {
                "type": "server_vad",
                "threshold": turn.threshold,
                "prefix_padding_ms": turn.prefix_padding_ms,
                "silence_duration_ms": turn.silence_duration_ms,
            }
        )
        if self.shape == "beta":
            return {
                "id": self.id,
                "object": "realtime.transcription_session",
                "input_audio_format": self.input_format.encoding,
                "input_audio_transcription": transcription,
                "turn_detection": turn_detection,
                "input_audio_noise_reduction": self.noise_reduction,
                "include": list(self.include),
            }
        return {
            "type": "transcription",
            "id": self.id,
            "object": "realtime.transcription_session",
            "audio": {
                "input": {
                    "format": self.input_format.ga(),
                    "transcription": transcription,
                    "turn_detection": turn_detection,
                    "noise_reduction": self.noise_reduction,
                }
            },
            "include": list(self.include),
        }

    def session_event(self, kind: Literal["created", "updated"]) -> dict[str, Any]:
        prefix = "transcription_session" if self.shape == "beta" else "session"
        return {"type": f"{prefix}.{kind}", "session": self.render()}


def _turn_detection(value: Any, current: TurnDetection | None) -> TurnDetection | None:
    """`null` turns server VAD off; any type (server_vad, semantic_vad) is served by Silero VAD."""
    if value is None:
        return None
    if not isinstance(value, dict):
        return current
    base = current or TurnDetection()
    return TurnDetection(
        threshold=_number(value.get("threshold"), base.threshold, 0.0, 1.0),
        prefix_padding_ms=int(_number(value.get("prefix_padding_ms"), base.prefix_padding_ms, 0, 10_000)),
        silence_duration_ms=int(_number(value.get("silence_duration_ms"), base.silence_duration_ms, 0, 10_000)),
    )


def _number(value: Any, default: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return min(max(float(value), low), high)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _keywords(value: Any) -> tuple[str, ...]:
    """The transcription's `keywords`, checked as the HTTP field's are (`null`: none)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise ApiError(400, "keywords must be a list of strings.", param="keywords", code="invalid_value")
    return parse_keywords(value, "keywords")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def error_event(message: str, code: str, error_type: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"type": "error", "error": {"type": error_type, "code": code, "message": message, "param": param}}
