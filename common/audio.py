"""Decode uploads to what every model family takes: 16 kHz mono float32 PCM.

Decoding runs in the API process, so inference workers receive compact PCM rather than uploads, and a
file that cannot be decoded is refused before it reaches a worker. PyAV reads any container ffmpeg
reads; raw little-endian pcm16 is taken as is when the content type says so (`audio/pcm;rate=24000`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np

from common.errors import ApiError

SAMPLE_RATE = 16_000
RAW_PCM_TYPES = frozenset({"audio/pcm", "audio/l16", "audio/x-pcm", "audio/raw", "audio/x-raw"})
DEFAULT_RAW_RATE = 24_000  # OpenAI's pcm16 rate


@dataclass(frozen=True)
class AudioLimits:
    max_seconds: float


class AudioError(ApiError):
    def __init__(self, message: str, code: str = "invalid_audio") -> None:
        super().__init__(400, message, param="file", code=code)


def decode(file: BinaryIO, content_type: str | None, limits: AudioLimits) -> np.ndarray:
    """Return 16 kHz mono float32 samples in [-1, 1], or raise `AudioError`."""
    media_type, params = _parse_content_type(content_type)
    if media_type in RAW_PCM_TYPES:
        samples = _decode_raw_pcm16(
            file.read(), int(params.get("rate", DEFAULT_RAW_RATE)), int(params.get("channels", 1))
        )
    else:
        samples = _decode_container(file, limits)
    if samples.size == 0:
        raise AudioError("The audio file contains no audio.", code="empty_audio")
    if samples.size > limits.max_seconds * SAMPLE_RATE:
        raise _too_long(limits)
    return samples


def _parse_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    media_type, *rest = (content_type or "").split(";")
    params = dict(p.strip().lower().split("=", 1) for p in rest if "=" in p)
    return media_type.strip().lower(), params


def _too_long(limits: AudioLimits) -> AudioError:
    return AudioError(
        f"The audio is longer than this server's limit of {limits.max_seconds:g} seconds.", "audio_too_long"
    )


def _decode_container(file: BinaryIO, limits: AudioLimits) -> np.ndarray:
    # s16 then /32768, exactly as faster_whisper.decode_audio does, so results match in-process runs.
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    max_samples = limits.max_seconds * SAMPLE_RATE
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(file, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("The file has no audio stream.")
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += out.samples
                if total > max_samples:
                    raise _too_long(limits)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise AudioError(f"The audio file could not be decoded ({reason}); send any format ffmpeg reads.") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def _decode_raw_pcm16(data: bytes, rate: int, channels: int) -> np.ndarray:
    frame_bytes = 2 * channels
    if rate <= 0 or channels <= 0 or len(data) % frame_bytes:
        raise AudioError("Raw pcm16 must be whole little-endian 16-bit frames with a positive rate and channel count.")
    pcm = np.frombuffer(data, dtype="<i2").reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768.0
    return resample(pcm, rate)


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """Resample float32 mono PCM to 16 kHz with ffmpeg's resampler."""
    if rate == SAMPLE_RATE or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.float32), format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    out = [f.to_ndarray().reshape(-1) for f in (*resampler.resample(frame), *resampler.resample(None))]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
