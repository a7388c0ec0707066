"""Who spoke when, shared by the diarization server and the transcription servers: the diarizer's
`Turn`s, and the one place where a transcript's words meet them (`SpeakerSplitter`)."""

from __future__ import annotations

import bisect
import itertools
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from common.transcript import Segment, Transcript


@dataclass(frozen=True)
class Turn:
    """A stretch of speech by one speaker, in seconds from the start of the audio."""

    start: float
    end: float
    speaker: str


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
