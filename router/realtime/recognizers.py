"""Text for a turn's audio as it grows, from the family server that serves the session's model.

`Redecode` (offline models: Whisper, Parakeet, ONNX) sends the whole utterance so far to the family
server at each interim step; the requests of every session meet in LitServe's batches there. Its
deltas only ever append: it emits words once two things hold, that they are not the last word of the
hypothesis (which may be cut mid-word) and that the words already emitted are still the hypothesis's
first words; `completed` carries the final decode, whatever the deltas said.

`Incremental` (cache-aware NeMo models) sends only the new audio, tagged with a live stream id; the
model worker keeps the stream's encoder caches and hypothesis between requests and steps every
session's stream in one batch, so each delta is exactly the text the new audio added.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from router.realtime.protocol import new_id


@dataclass(frozen=True)
class Request:
    """One call to the family server for one item of a session."""

    audio: np.ndarray  # 16 kHz float32: the whole utterance, or (live) only the new audio
    final: bool
    live_id: str | None = None  # set for incremental decoding: the worker's stream to continue


@dataclass(frozen=True)
class Decoded:
    """A family server's answer: the text, and its logprobs when the session asked for them (finals only)."""

    text: str
    logprobs: list[dict] | None = None


Transcribe = Callable[[Request], Awaitable[Decoded]]


class Busy(Exception):
    """An interim decode was not run: the model is busy (with final transcripts first)."""


class ItemDecoder(Protocol):
    """One item's text. `add` takes audio as it arrives; `interim` and `final` decode what was added."""

    # Whether `final` may run before the item is committed, and be run again if more audio comes:
    # true when it changes no state, so a turn's transcript can be decoded during its silence window.
    speculative: bool

    def add(self, audio: np.ndarray) -> None: ...

    async def interim(self, decoding: Awaitable[Decoded] | None = None) -> str:
        """The text to append to what was sent so far (may be empty).

        `decoding`, only for speculative decoders: a `final` of the audio added so far, already under
        way (speech resumed after the pause it was started at): its text is used, not a new decode.
        """
        ...

    async def final(self) -> Decoded:
        """The whole transcript of the audio added so far."""
        ...

    def close(self, transcript: str) -> str:
        """The last delta, once `transcript` (a `final` result) is the item's."""
        ...


class Redecode:
    speculative = True

    def __init__(self, transcribe: Transcribe) -> None:
        self.transcribe = transcribe
        self.audio: list[np.ndarray] = []
        self.emitted: list[str] = []

    def add(self, audio: np.ndarray) -> None:
        self.audio.append(audio)

    async def interim(self, decoding: Awaitable[Decoded] | None = None) -> str:
        try:
            decoded = await (decoding or self.transcribe(Request(np.concatenate(self.audio), final=False)))
        except Busy:
            return ""
        return self._extend(decoded.text.split()[:-1])

    async def final(self) -> Decoded:
        return await self.transcribe(Request(np.concatenate(self.audio), final=True))

    def close(self, transcript: str) -> str:
        return self._extend(transcript.split())

    def _extend(self, words: list[str]) -> str:
        """The delta that takes the emitted words to `words`, or '' when they no longer agree."""
        if len(words) <= len(self.emitted) or _plain(words[: len(self.emitted)]) != _plain(self.emitted):
            return ""
        new = words[len(self.emitted) :]
        delta = (" " if self.emitted else "") + " ".join(new)
        self.emitted += new
        return delta


class Incremental:
    speculative = False  # the last step ends the worker's stream

    def __init__(self, transcribe: Transcribe) -> None:
        self.transcribe = transcribe
        self.live_id = new_id("live")
        self.pending: list[np.ndarray] = []
        self.text = ""  # the stream's text so far: it only ever grows
        self.last = ""

    def add(self, audio: np.ndarray) -> None:
        self.pending.append(audio)

    async def interim(self, decoding: Awaitable[Decoded] | None = None) -> str:
        return self._advance((await self._step(final=False)).text)  # never speculative: `decoding` is None

    async def final(self) -> Decoded:
        decoded = await self._step(final=True)
        self.last = self._advance(decoded.text)
        return decoded

    def close(self, transcript: str) -> str:
        return self.last

    async def _step(self, final: bool) -> Decoded:
        """Send the audio not yet sent; the worker answers with the stream's whole text so far."""
        audio = np.concatenate(self.pending) if self.pending else np.zeros(0, np.float32)
        self.pending = []
        return await self.transcribe(Request(audio, final=final, live_id=self.live_id))

    def _advance(self, text: str) -> str:
        """The text the stream added (a live stream's text only grows)."""
        if not text.startswith(self.text):
            return ""
        delta, self.text = text[len(self.text) :], text
        return delta


def _plain(words: list[str]) -> list[str]:
    """Words compared without case or punctuation: a revision that only adds a comma still agrees."""
    return [re.sub(r"[^\w']", "", w).lower() for w in words]
