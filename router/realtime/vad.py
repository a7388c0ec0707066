"""Server VAD: Silero VAD (the ONNX model faster-whisper ships) over a live 16 kHz stream, as turns.

`TurnDetector` follows OpenAI's `server_vad` settings: speech starts when a 32 ms frame's speech
probability reaches `threshold`; it stops once the probability has stayed below `threshold - 0.15`
(Silero's usual hysteresis) for `silence_duration_ms`; each turn's audio begins `prefix_padding_ms`
before the speech did and ends `TAIL_MS` after it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from faster_whisper.vad import SileroVADModel, get_vad_model

FRAME = 512  # samples per Silero frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame each frame is given
# Silence kept at the end of a turn's audio. The turn's audio ends this long after the speech, so its
# final transcript can be decoded while the rest of the silence window runs out.
TAIL_MS = 100


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
    """A change in the stream at `sample` (16 kHz):

    - start: speech begins (the first speech frame);
    - pause: the speech has been followed by `TAIL_MS` of silence: the turn's audio may end here;
    - resume: speech again before the silence was long enough to end the turn;
    - stop: the silence lasted `silence_duration_ms`; `speech_end` is where it began.
    """

    kind: Literal["start", "pause", "resume", "stop"]
    sample: int
    speech_end: int = 0


class TurnDetector:
    def __init__(self, settings: TurnDetection) -> None:
        self.settings = settings
        self.state = np.zeros((2, 1, 1, 128), np.float32)  # the LSTM's h and c
        self.context = np.zeros(CONTEXT, np.float32)
        self.pending = np.zeros(0, np.float32)
        self.frames = 0  # frames scored so far
        self.speaking = False
        self.silent_since: int | None = None  # first frame of the current silence while speaking
        self.paused = False

    def push(self, audio: np.ndarray) -> list[Boundary]:
        """Score the complete frames `audio` finishes; the boundaries they cross, in order."""
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
        return [b for p in np.asarray(probs).reshape(-1) for b in self._frame(float(p))]

    def _frame(self, prob: float) -> list[Boundary]:
        s = self.settings
        index, self.frames = self.frames, self.frames + 1
        if not self.speaking:
            if prob >= s.threshold:
                self.speaking, self.silent_since, self.paused = True, None, False
                return [Boundary("start", index * FRAME)]
            return []
        if prob >= max(s.threshold - 0.15, 0.01):  # Silero's hysteresis: speech continues
            self.silent_since = None
            if self.paused:
                self.paused = False
                return [Boundary("resume", index * FRAME)]
            return []
        if self.silent_since is None:
            self.silent_since = index
        silence = (index + 1 - self.silent_since) * FRAME
        boundaries = []
        if not self.paused and silence >= min(TAIL_MS, s.silence_duration_ms) * 16:
            self.paused = True
            boundaries.append(Boundary("pause", (index + 1) * FRAME))
        if silence >= s.silence_duration_ms * 16:
            self.speaking = False
            boundaries.append(Boundary("stop", (index + 1) * FRAME, speech_end=self.silent_since * FRAME))
        return boundaries
