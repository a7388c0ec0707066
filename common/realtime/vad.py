"""Server VAD: Silero VAD (the ONNX model faster-whisper ships) over a live 16 kHz stream, as turns.

`TurnDetector` follows OpenAI's `server_vad` settings: speech starts when a 32 ms frame's speech
probability reaches `threshold`; it stops once the probability has stayed below `threshold - 0.15`
(Silero's usual hysteresis) for `silence_duration_ms`; each turn's audio begins `prefix_padding_ms`
before the speech did.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import SileroVADModel, get_vad_model

FRAME = 512  # samples per Silero frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame each frame is given


@functools.cache
def _model() -> SileroVADModel:
    """One ONNX session for the process; each stream carries its own recurrent state."""
    return get_vad_model()


@dataclass(frozen=True)
class TurnDetection:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class Boundary:
    """Speech started (`start` True) or stopped, at `sample` of the stream (16 kHz)."""

    start: bool
    sample: int


class TurnDetector:
    def __init__(self, settings: TurnDetection) -> None:
        self.settings = settings
        self.state = np.zeros((2, 1, 1, 128), np.float32)  # the LSTM's h and c
        self.context = np.zeros(CONTEXT, np.float32)
        self.pending = np.zeros(0, np.float32)
        self.frames = 0  # frames scored so far
        self.speaking = False
        self.silent_since: int | None = None  # first frame of the current silence while speaking

    def push(self, audio: np.ndarray) -> list[Boundary]:
        """Score the complete frames `audio` finishes; the speech boundaries they cross."""
        self.pending = np.concatenate([self.pending, audio])
        n = len(self.pending) // FRAME
        if n == 0:
            return []
        frames = self.pending[: n * FRAME].reshape(n, FRAME)
        self.pending = self.pending[n * FRAME :]
        contexts = np.concatenate([self.context[None], frames[:-1, -CONTEXT:]])
        self.context = frames[-1, -CONTEXT:].copy()
        probs, h, c = _model().session.run(
            None, {"input": np.concatenate([contexts, frames], axis=1), "h": self.state[0], "c": self.state[1]}
        )
        self.state = np.stack([h, c])
        boundaries = [b for p in np.asarray(probs).reshape(-1) if (b := self._frame(float(p))) is not None]
        return boundaries

    def _frame(self, prob: float) -> Boundary | None:
        s = self.settings
        index, self.frames = self.frames, self.frames + 1
        if not self.speaking:
            if prob >= s.threshold:
                self.speaking, self.silent_since = True, None
                return Boundary(True, index * FRAME)
            return None
        if prob >= max(s.threshold - 0.15, 0.01):
            self.silent_since = None
            return None
        if self.silent_since is None:
            self.silent_since = index
        if (index + 1 - self.silent_since) * FRAME >= s.silence_duration_ms * 16:
            self.speaking = False
            return Boundary(False, self.silent_since * FRAME)
        return None
