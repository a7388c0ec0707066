"""Realtime input audio: the session's format (pcm16 at any rate, G.711 μ-law / A-law) to 16 kHz float32.

PyAV's PCM decoders and its stateful resampler do the work, so a stream cut into arbitrary chunks
resamples exactly as if it were one piece.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from common.audio import SAMPLE_RATE

CODECS = {"pcm16": "pcm_s16le", "g711_ulaw": "pcm_mulaw", "g711_alaw": "pcm_alaw"}
# The GA session names formats by MIME type; G.711 is always 8 kHz.
GA_TYPES = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}
DEFAULT_PCM_RATE = 24_000


@dataclass(frozen=True)
class InputFormat:
    encoding: str = "pcm16"  # a key of CODECS: the beta name
    rate: int = DEFAULT_PCM_RATE

    @classmethod
    def from_ga(cls, value: dict) -> InputFormat | None:
        """`{"type": "audio/pcm", "rate": 24000}`; None when the type is not one we decode."""
        encoding = GA_TYPES.get(value.get("type", "audio/pcm"))
        if encoding is None:
            return None
        rate = _rate(value.get("rate")) if encoding == "pcm16" else 8_000
        return cls(encoding, rate or DEFAULT_PCM_RATE)

    @classmethod
    def from_beta(cls, value: str) -> InputFormat | None:
        if value not in CODECS:
            return None
        return cls(value, DEFAULT_PCM_RATE if value == "pcm16" else 8_000)

    def ga(self) -> dict:
        mime = next(mime for mime, encoding in GA_TYPES.items() if encoding == self.encoding)
        return {"type": mime, "rate": self.rate} if self.encoding == "pcm16" else {"type": mime}

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1


def _rate(value: object) -> int | None:
    return value if isinstance(value, int) and 8_000 <= value <= 48_000 else None


class InputDecoder:
    """Decodes one session's appended chunks, in order, to 16 kHz float32."""

    def __init__(self, fmt: InputFormat) -> None:
        self.format = fmt
        self.codec = av.CodecContext.create(CODECS[fmt.encoding], "r")
        self.codec.sample_rate = fmt.rate
        self.codec.layout = "mono"
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self.partial = b""  # an odd trailing byte of pcm16, completed by the next chunk

    def decode(self, data: bytes) -> np.ndarray:
        data = self.partial + data
        cut = len(data) - len(data) % self.format.bytes_per_sample
        data, self.partial = data[:cut], data[cut:]
        if not data:
            return np.zeros(0, np.float32)
        frames = [out for frame in self.codec.decode(av.Packet(data)) for out in self.resampler.resample(frame)]
        return _samples(frames)


def _samples(frames: list[av.AudioFrame]) -> np.ndarray:
    # The resampler holds back about 1 ms of audio until more arrives: negligible for turns.
    if not frames:
        return np.zeros(0, np.float32)
    return np.concatenate([frame.to_ndarray()[0] for frame in frames]).astype(np.float32, copy=False)
