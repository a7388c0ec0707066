"""One transcript model for every model family.

Families produce `Segment`s (with optional `Word`s) as they decode; the spec assembles them into a
`Transcript` and renders it in the format the client asked for (see `common.formats`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Task = Literal["transcribe", "translate"]


@dataclass
class Word:
    word: str
    start: float
    end: float
    probability: float | None = None
    speaker: str | None = None  # only in diarized transcripts


@dataclass
class Logprob:
    """OpenAI's `logprobs` entry: a token (or, where a family scores only words, a word) and its log
    probability."""

    token: str
    logprob: float

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "logprob": self.logprob, "bytes": list(self.token.encode())}


@dataclass
class Segment:
    """A stretch of decoded text with the fields of OpenAI's verbose_json segment."""

    id: int
    start: float
    end: float
    text: str
    seek: int = 0
    tokens: list[int] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] | None = None
    logprobs: list[Logprob] | None = None  # only when the job asked for them
    speaker: str | None = None  # only in diarized transcripts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        words, logprobs = data.get("words"), data.get("logprobs")
        return cls(
            **{
                **data,
                "words": None if words is None else [Word(**w) for w in words],
                "logprobs": None if logprobs is None else [Logprob(**p) for p in logprobs],
            }
        )


@dataclass
class Transcript:
    text: str
    language: str
    duration: float
    segments: list[Segment]
    task: Task = "transcribe"

    @property
    def words(self) -> list[Word]:
        return [word for segment in self.segments for word in segment.words or ()]

    @property
    def logprobs(self) -> list[Logprob]:
        return [logprob for segment in self.segments for logprob in segment.logprobs or ()]

    @classmethod
    def from_segments(cls, segments: list[Segment], language: str, duration: float, task: Task) -> Transcript:
        return cls(join_text(s.text for s in segments), language, duration, segments, task)


def join_text(pieces: Any) -> str:
    """Join segment texts the way Whisper emits them (each carries its own leading space)."""
    return "".join(pieces).strip()
