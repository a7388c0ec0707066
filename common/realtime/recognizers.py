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

from common.realtime.protocol import new_id


@dataclass(frozen=True)
class Request:
    """One call to the family server for one item of a session."""

    audio: np.ndarray  # 16 kHz float32: the whole utterance, or (live) only the new audio
    final: bool
    live_id: str | None = None  # set for incremental decoding: the worker's stream to continue


Transcribe = Callable[[Request], Awaitable[str]]


class ItemDecoder(Protocol):
    async def add(self, audio: np.ndarray) -> str:
        """More audio of the item while the speaker talks: the text to append (may be empty)."""
        ...

    async def finish(self, audio: np.ndarray) -> tuple[str, str]:
        """The item's last audio: the last delta and the whole transcript."""
        ...


class Redecode:
    def __init__(self, transcribe: Transcribe) -> None:
        self.transcribe = transcribe
        self.audio: list[np.ndarray] = []
        self.emitted: list[str] = []

    async def add(self, audio: np.ndarray) -> str:
        self.audio.append(audio)
        words = (await self.transcribe(Request(np.concatenate(self.audio), final=False))).split()
        return self._extend(words[:-1])

    async def finish(self, audio: np.ndarray) -> tuple[str, str]:
        self.audio.append(audio)
        text = await self.transcribe(Request(np.concatenate(self.audio), final=True))
        return self._extend(text.split()), text

    def _extend(self, words: list[str]) -> str:
        """The delta that takes the emitted words to `words`, or '' when they no longer agree."""
        if len(words) <= len(self.emitted) or _plain(words[: len(self.emitted)]) != _plain(self.emitted):
            return ""
        new = words[len(self.emitted) :]
        delta = (" " if self.emitted else "") + " ".join(new)
        self.emitted += new
        return delta


class Incremental:
    def __init__(self, transcribe: Transcribe) -> None:
        self.transcribe = transcribe
        self.live_id = new_id("live")
        self.text = ""

    async def add(self, audio: np.ndarray) -> str:
        delta = await self.transcribe(Request(audio, final=False, live_id=self.live_id))
        self.text += delta
        return delta

    async def finish(self, audio: np.ndarray) -> tuple[str, str]:
        delta = await self.transcribe(Request(audio, final=True, live_id=self.live_id))
        self.text += delta
        return delta, self.text.strip()


def _plain(words: list[str]) -> list[str]:
    """Words compared without case or punctuation: a revision that only adds a comma still agrees."""
    return [re.sub(r"[^\w']", "", w).lower() for w in words]
