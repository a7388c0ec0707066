"""Who spoke when, shared by the diarization server and the transcription servers: the diarizer's
`Turn`s (a `Diarization`), the voices a request enrols by name (`parse_known_speakers`), and the one place
where a transcript's words meet the turns (`SpeakerSplitter`).

Known speakers follow OpenAI's `known_speaker_names[]` and `known_speaker_references[]` fields: each
reference a data URL of a short recording of that voice, checked and decoded here to the 16 kHz samples
a diarizer compares voices on.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import dataclasses
import io
import itertools
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from common.audio import AudioError, AudioLimits, decode
from common.errors import ApiError
from common.transcript import Segment, Transcript

MAX_KNOWN_SPEAKERS = 4
MAX_NAME_CHARS = 64
# How long each reference recording must be (seconds): OpenAI's bounds.
MIN_REFERENCE_SECONDS = 2.0
MAX_REFERENCE_SECONDS = 10.0
NAMES = "known_speaker_names[]"
REFERENCES = "known_speaker_references[]"


@dataclass(frozen=True)
class Turn:
    """A stretch of speech by one speaker, in seconds from the start of the audio."""

    start: float
    end: float
    speaker: str

    def to_json(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "speaker": self.speaker}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Turn:
        return cls(float(data["start"]), float(data["end"]), str(data["speaker"]))


def speakers(turns: Iterable[Turn]) -> list[str]:
    """The speakers of `turns`, each once, in order of first appearance."""
    return list(dict.fromkeys(turn.speaker for turn in turns))


@dataclass(frozen=True)
class Diarization:
    """Who spoke when in a recording of `duration` seconds: its turns in time order. As JSON, the body of
    `/v1/audio/diarizations` (less its `object` and `model`), with the speakers listed."""

    duration: float
    turns: tuple[Turn, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "duration": round(self.duration, 3),
            "speakers": speakers(self.turns),
            "turns": [turn.to_json() for turn in self.turns],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Diarization:
        return cls(float(data["duration"]), tuple(Turn.from_json(turn) for turn in data["turns"]))


def letters() -> Iterator[str]:
    """Speaker labels: A, B, ... Z, then AA, AB, ..."""
    for size in itertools.count(1):
        for letters_ in itertools.product(string.ascii_uppercase, repeat=size):
            yield "".join(letters_)


class SpeakerLabels:
    """Speakers as clients see them: enrolled voices by their names, the others A, B, ... in the order
    they first speak in the transcript (the diarizer's letters may skip a voice that said no word)."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self.known = frozenset(known)
        self.given: dict[str, str] = {}
        self.free = (label for label in letters() if label not in self.known)

    def __call__(self, speaker: str) -> str:
        if speaker in self.known:
            return speaker
        if speaker not in self.given:
            self.given[speaker] = next(self.free)
        return self.given[speaker]


class Timeline:
    """Who speaks when: the diarizer's turns, searchable by time (turns may overlap)."""

    def __init__(self, turns: Iterable[Turn]) -> None:
        self.turns = sorted(turns, key=lambda t: t.start)
        self.starts = [t.start for t in self.turns]
        self.latest: list[int] = []  # [i]: the turn among turns[: i + 1] that ends latest
        for i, turn in enumerate(self.turns):
            if not self.latest or turn.end > self.turns[self.latest[-1]].end:
                self.latest.append(i)
            else:
                self.latest.append(self.latest[-1])

    def speaker(self, start: float, end: float) -> str:
        """The speaker whose turns cover most of [start, end]; failing any, the one of the nearest turn
        ("" when nobody speaks at all)."""
        after = bisect.bisect_right(self.starts, end)  # turns from here on start after `end`
        overlaps: dict[str, float] = {}
        for i in range(after - 1, -1, -1):
            if self.turns[self.latest[i]].end <= start:
                break
            turn = self.turns[i]
            overlap = min(end, turn.end) - max(start, turn.start)
            if overlap > 0:
                overlaps[turn.speaker] = overlaps.get(turn.speaker, 0.0) + overlap
        if overlaps:
            return max(overlaps, key=overlaps.__getitem__)
        gaps = []
        if after > 0:
            before = self.turns[self.latest[after - 1]]
            gaps.append((start - before.end, before.speaker))
        if after < len(self.turns):
            gaps.append((self.turns[after].start - end, self.turns[after].speaker))
        return min(gaps)[1] if gaps else ""


class SpeakerSplitter:
    """Segments cut where the speaker changes, each piece with its speaker: the one place where words
    meet turns. A word goes to the speaker whose turns cover most of it; a segment without words goes
    whole to the speaker of most of its time. Pieces are numbered in order, so segments can be split
    as they stream in."""

    def __init__(self, turns: Iterable[Turn], known: Iterable[str] = ()) -> None:
        self.timeline = Timeline(turns)
        self.labels = SpeakerLabels(known)
        self.count = 0

    def split(self, segment: Segment) -> list[Segment]:
        if not segment.words:
            return [self._piece(segment, self.labels(self.timeline.speaker(segment.start, segment.end)))]
        runs = itertools.groupby(segment.words, key=lambda w: self.labels(self.timeline.speaker(w.start, w.end)))
        pieces = [(speaker, list(words)) for speaker, words in runs]
        if len(pieces) == 1:
            return [self._piece(segment, pieces[0][0])]
        return [
            self._piece(
                replace(
                    segment,
                    start=segment.start if i == 0 else words[0].start,
                    end=segment.end if i == len(pieces) - 1 else words[-1].end,
                    text="".join(w.word for w in words),
                    tokens=[],
                    words=words,
                    logprobs=None,
                ),
                speaker,
            )
            for i, (speaker, words) in enumerate(pieces)
        ]

    def transcript(self, transcript: Transcript) -> Transcript:
        """The whole transcript, split."""
        return replace(transcript, segments=[piece for s in transcript.segments for piece in self.split(s)])

    def _piece(self, segment: Segment, speaker: str) -> Segment:
        words = None if segment.words is None else [replace(w, speaker=speaker) for w in segment.words]
        piece = replace(segment, id=self.count, speaker=speaker, words=words)
        self.count += 1
        return piece


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class KnownSpeaker:
    """A voice the client named: its name, and its reference recording as 16 kHz mono float32."""

    name: str
    audio: np.ndarray


def parse_known_speakers(
    names: list[str] | None, references: list[str] | None, limits: AudioLimits
) -> tuple[KnownSpeaker, ...]:
    """The known speakers of a request, by OpenAI's rules: at most `MAX_KNOWN_SPEAKERS`, one reference per
    name, each reference a data URL (`data:audio/wav;base64,...`, any audio `common.audio.decode` reads) of
    2 to 10 seconds. Names are also bounded and unique here, since they become speaker labels. Anything
    else is a 400 naming the field at fault. Decodes through `limits`' spool folder, and leaves no file."""
    names = [name.strip() for name in names or ()]
    references = list(references or ())
    if len(names) > MAX_KNOWN_SPEAKERS:
        raise _invalid(NAMES, f"Too many known speakers ({len(names)}); at most {MAX_KNOWN_SPEAKERS}.")
    if len(names) != len(references):
        raise _invalid(
            REFERENCES,
            f"Send one {REFERENCES} per {NAMES}; got {len(names)} name(s) and {len(references)} reference(s).",
        )
    for name in names:
        if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise _invalid(NAMES, f"Invalid known speaker name {name!r}: 1 to {MAX_NAME_CHARS} printable characters.")
    if len(set(names)) < len(names):
        raise _invalid(NAMES, "Known speaker names must be unique.")
    return tuple(
        KnownSpeaker(name, _reference_audio(name, reference, limits))
        for name, reference in zip(names, references, strict=True)
    )


def _reference_audio(name: str, url: str, limits: AudioLimits) -> np.ndarray:
    media_type, data = _data_url(name, url)
    try:
        audio = decode(io.BytesIO(data), media_type, dataclasses.replace(limits, max_seconds=MAX_REFERENCE_SECONDS))
    except AudioError as exc:
        if exc.code == "audio_too_long":
            raise _bad_length(name) from None
        raise ApiError(
            400, f"The reference for {name!r} is not audio we can read: {exc.message}", param=REFERENCES, code=exc.code
        ) from None
    try:
        if audio.duration < MIN_REFERENCE_SECONDS:
            raise _bad_length(name)
        return audio.read()
    finally:
        audio.delete()


def _data_url(name: str, url: str) -> tuple[str, bytes]:
    """(media type, bytes) of a base64 data URL: `data:<media type>;base64,<data>`."""
    header, comma, payload = url.strip().partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise _invalid(REFERENCES, f"The reference for {name!r} is not a base64 data URL (data:audio/wav;base64,...).")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except binascii.Error:
        data = b""
    if not data:
        raise _invalid(REFERENCES, f"The reference for {name!r} has no valid base64 data.")
    return header.removeprefix("data:").removesuffix(";base64"), data


def _bad_length(name: str) -> ApiError:
    return _invalid(
        REFERENCES,
        f"The reference for {name!r} must be {MIN_REFERENCE_SECONDS:g} to {MAX_REFERENCE_SECONDS:g} seconds long.",
    )


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")
