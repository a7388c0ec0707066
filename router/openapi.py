"""The OpenAI audio form as an OpenAPI request body, for routes that read the raw request.

The router forwards an upload byte for byte and never declares its form fields to FastAPI, so its
OpenAPI schema (and Swagger UI at /docs) would show no body at all. `audio_form` describes the multipart
form that the family servers read (`specs.openai_audio`), to pass as a route's `openapi_extra`.
"""

from __future__ import annotations

from typing import Any

from common.formats import RESPONSE_FORMATS


def _text(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def _array(description: str, values: list[str] | None = None) -> dict[str, Any]:
    items = {"type": "string", **({"enum": values} if values else {})}
    return {"type": "array", "items": items, "description": description}


_FIELDS: dict[str, dict[str, Any]] = {
    "file": {
        "type": "string",
        "format": "binary",
        "description": "The audio file: any format ffmpeg reads, or raw pcm16 (Content-Type audio/pcm;rate=N).",
    },
    "model": _text("A model id or alias (see /v1/models)."),
    "language": _text("ISO-639-1 code of the spoken language; detected when absent."),
    "prompt": _text("Text to guide the model's style or continue a previous segment."),
    "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
    "temperature": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "description": "Sampling temperature; absent means Whisper's fallback schedule.",
    },
    "timestamp_granularities[]": _array("Timestamps in verbose_json: word and/or segment.", ["word", "segment"]),
    "include[]": _array("Extra response fields: logprobs (json, or the stream's deltas).", ["logprobs"]),
    "stream": {
        "type": "boolean",
        "default": False,
        "description": "Server-Sent Events: transcript.text.delta as text is decoded, then transcript.text.done.",
    },
    "keywords[]": _array("Words and phrases to favour (names, jargon): up to 100, each one line without < or >."),
    "languages[]": _array("Candidate ISO-639-1 codes: the language is detected among them (not with language)."),
    "target_language": _text("Models that translate to several languages (Canary): the output language."),
    "diarize": {
        "type": "boolean",
        "default": False,
        "description": "Speakers in verbose_json, srt and vtt (diarized_json always has them).",
    },
    "known_speaker_names[]": _array("Names of up to 4 known voices, in the order of their references."),
    "known_speaker_references[]": _array("Data URLs of 2-10 s of each known voice, in any audio format."),
}
_TRANSLATION_FIELDS = ("file", "model", "prompt", "response_format", "temperature", "language", "stream")
_DIARIZATION_FIELDS = ("file", "model", "known_speaker_names[]", "known_speaker_references[]")


def audio_form(task: str) -> dict[str, Any]:
    """`openapi_extra` for /v1/audio/transcriptions (`task="transcribe"`), /v1/audio/translations
    ("translate") or /v1/audio/diarizations ("diarize")."""
    names = {
        "transcribe": list(_FIELDS),
        "translate": [*_TRANSLATION_FIELDS, "target_language"],
        "diarize": list(_DIARIZATION_FIELDS),
    }[task]
    properties = {name: _FIELDS[name] for name in names}
    # Without an explicit style, Swagger UI joins array items with commas into one field; OpenAI's form
    # repeats the field once per item.
    encoding = {name: {"style": "form", "explode": True} for name in names if properties[name]["type"] == "array"}
    schema = {"type": "object", "required": ["file", "model"], "properties": properties}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema, "encoding": encoding}},
        },
        "responses": {
            "200": {
                "description": "The transcript in the chosen response_format, or Server-Sent Events with stream "
                "(diarizations: who spoke when, as JSON turns).",
                "content": {
                    "application/json": {},
                    "text/plain": {},
                    "text/event-stream": {},
                },
            }
        },
    }
