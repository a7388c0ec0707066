"""What a served model is and can do: one definition for the router's registry and the family servers,
and one rendering of OpenAI's model object for both `/v1/models`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from common.languages import LANGUAGES

CREATED = int(time.time())
# The model ids OpenAI's clients hardcode (Realtime's last two): a server run alone on its default model
# answers to them all, and configs/models.yaml gives them to the bundled model.
OPENAI_MODEL_IDS = (
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-transcribe",
    "gpt-4o-transcribe-diarize",
    "gpt-realtime-whisper",
    "gpt-live-transcribe",
)
# Names that diarize by default: speakers in every format that can carry them, without diarize=true.
DIARIZING_MODEL_IDS = frozenset({"gpt-4o-transcribe-diarize"})


@dataclass(frozen=True)
class Capabilities:
    """What requests a model can serve; the spec validates requests against it."""

    languages: tuple[str, ...] | None = None  # None: every language the family knows
    translate: bool = False
    word_timestamps: bool = True
    stream: bool = True
    # Keeps a stream's state between requests (form field `live_id`): cache-aware streaming models,
    # which the router's Realtime WebSocket steps incrementally.
    live: bool = False
    transcribe: bool = True  # serves /v1/audio/transcriptions (a diarizer does not)
    diarize: bool = False  # serves /v1/audio/diarizations

    @classmethod
    def from_json(cls, model: dict[str, Any]) -> Capabilities:
        """Read back what `to_json` wrote into a model object (a family server's, for the router)."""
        able = model.get("capabilities", {})
        return cls(
            languages=None if sorted(model.get("languages", [])) == sorted(LANGUAGES) else tuple(model["languages"]),
            translate=bool(able.get("translate")),
            word_timestamps=bool(able.get("word_timestamps", True)),
            stream=bool(able.get("stream", True)),
            transcribe=bool(able.get("transcribe", True)),
            diarize=bool(able.get("diarize", False)),
        )

    def to_json(self) -> dict[str, Any]:
        """The `languages` and `capabilities` fields of a model object."""
        return {
            "languages": list(self.languages) if self.languages is not None else sorted(LANGUAGES),
            "capabilities": {
                "translate": self.translate,
                "stream": self.stream,
                "word_timestamps": self.word_timestamps,
                "transcribe": self.transcribe,
                "diarize": self.diarize,
            },
        }


# A diarizer: who spoke when, and no text (so none of the text options).
DIARIZE_ONLY = Capabilities(word_timestamps=False, stream=False, transcribe=False, diarize=True)


@dataclass(frozen=True)
class ModelCard:
    """A model as a family server serves it: its names, what it can do, the server's effective settings."""

    id: str
    family: str
    aliases: tuple[str, ...] = ()
    capabilities: Capabilities = field(default_factory=Capabilities)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)


def model_object(name: str, family: str, capabilities: Capabilities, **extra: Any) -> dict[str, Any]:
    """OpenAI's model object for `name` (an id or alias), with open-speech's fields."""
    return {
        "id": name,
        "object": "model",
        "created": CREATED,
        "owned_by": "open-speech",
        "family": family,
        **extra,
        **capabilities.to_json(),
    }
