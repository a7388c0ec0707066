"""Decode uploads to what every model family takes: 16 kHz mono PCM, spooled to a file.

Decoding runs in the API process, so a file that cannot be decoded is refused before it reaches a
worker. PyAV reads any container ffmpeg reads; raw little-endian pcm16 is taken as is when the content
type says so (`audio/pcm;rate=24000`); 16 kHz mono 16-bit WAV and FLAC, the usual speech recordings, are
read by libsndfile (`soundfile`), which gives the very samples PyAV would at a fraction of its CPU (PyAV
spends most of its time per frame, and a FLAC frame holds a thousand samples or so).

The audio is decoded block by block into a file of 16-bit samples (`Audio`), which the job carries to
the worker by name and the worker reads window by window: nothing holds the whole recording in memory,
in any process, and the duration is checked before anything is decoded wherever the container or the
content type tells it. Deleting the file cancels the job: a
worker that finds it gone stops (`Audio.read` raises `Cancelled`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile

from common.errors import ApiError

logger = logging.getLogger("open_speech.audio")

SAMPLE_RATE = 16_000
RAW_PCM_TYPES = frozenset({"audio/pcm", "audio/l16", "audio/x-pcm", "audio/raw", "audio/x-raw"})
DEFAULT_RAW_RATE = 24_000  # OpenAI's pcm16 rate
RATES = (8_000, 384_000)  # sample rates accepted in containers; raw pcm16 takes 8-48 kHz, as Realtime does
RAW_RATES = (8_000, 48_000)
BLOCK_BYTES = 1 << 20  # raw pcm16 is read and resampled this much at a time
# What libsndfile reads in place of PyAV: lossless 16-bit PCM at the workers' rate, mono (no resampling
# or mixing, where the two libraries' arithmetic could differ).
LIBSNDFILE_LAYOUTS = frozenset((kind, "PCM_16", SAMPLE_RATE, 1) for kind in ("WAV", "WAVEX", "FLAC"))
# Audio that breaks after this many seconds is transcribed up to the break (a recording cut short);
# before, it is refused: bytes that only look like audio for a frame or two are not a recording.
BROKEN_AFTER_SECONDS = 1.0


class Cancelled(Exception):
    """The job's audio is gone: its client left, so the API process deleted it."""


@dataclass(frozen=True)
class Audio:
    """16 kHz mono 16-bit PCM in a file: what crosses from the API process to the workers."""

    path: str
    samples: int

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE

    @property
    def cancelled(self) -> bool:
        return not os.path.exists(self.path)

    def read(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Samples [start, end) as float32 in [-1, 1) (s16 / 32768, as faster_whisper.decode_audio)."""
        end = self.samples if end is None else min(end, self.samples)
        try:
            with open(self.path, "rb") as file:
                file.seek(2 * start)
                data = file.read(2 * max(0, end - start))
        except FileNotFoundError:
            raise Cancelled from None
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0

    def delete(self) -> None:
        Path(self.path).unlink(missing_ok=True)


@dataclass(frozen=True)
class AudioLimits:
    max_seconds: float
    spool: Path = Path(tempfile.gettempdir())  # where decoded audio is written (the server's own folder)


class AudioError(ApiError):
    def __init__(self, message: str, code: str = "invalid_audio") -> None:
        super().__init__(400, message, param="file", code=code)


def decode(file: BinaryIO, content_type: str | None, limits: AudioLimits, allow_empty: bool = False) -> Audio:
    """The upload as 16 kHz mono PCM in a spool file, or `AudioError` (and no file)."""
    media_type, params = _parse_content_type(content_type)
    spool = _Spool(limits)
    try:
        if media_type in RAW_PCM_TYPES:
            _decode_raw_pcm16(file, _raw_format(params), spool)
        elif not _read_pcm16_file(file, spool):
            _decode_container(file, spool)
    except BaseException:
        spool.discard()
        raise
    audio = spool.close()
    if audio.samples == 0 and not allow_empty:
        audio.delete()
        raise AudioError("The audio file contains no audio.", code="empty_audio")
    return audio


def spool(samples: np.ndarray, limits: AudioLimits) -> Audio:
    """16 kHz float32 samples spooled as a job's audio, for callers in the worker's own process
    (benchmarks and tests of a family's decode path)."""
    out = _Spool(limits)
    out.write(np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16))
    return out.close()


class _Spool:
    """The file decoded audio goes to, as 16-bit samples; refuses audio past the length limit."""

    def __init__(self, limits: AudioLimits) -> None:
        self.limits = limits
        self.max_samples = int(limits.max_seconds * SAMPLE_RATE)
        fd, self.path = tempfile.mkstemp(prefix="pcm-", dir=limits.spool)
        self.file = os.fdopen(fd, "wb")
        self.samples = 0

    def check(self, seconds: float) -> None:
        """Refuse audio that will be longer than the limit (known before decoding it)."""
        if seconds > self.limits.max_seconds:
            raise _too_long(self.limits)

    def write(self, s16: np.ndarray) -> None:
        self.samples += len(s16)
        if self.samples > self.max_samples:
            raise _too_long(self.limits)
        self.file.write(s16.astype("<i2", copy=False).tobytes())

    def restart(self) -> None:
        """Empty the file, for a decoder that starts over."""
        self.file.seek(0)
        self.file.truncate()
        self.samples = 0

    def close(self) -> Audio:
        self.file.close()
        return Audio(self.path, self.samples)

    def discard(self) -> None:
        self.file.close()
        Path(self.path).unlink(missing_ok=True)


def _parse_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    media_type, *rest = (content_type or "").split(";")
    params = dict(p.strip().lower().split("=", 1) for p in rest if "=" in p)
    return media_type.strip().lower(), params


def _raw_format(params: dict[str, str]) -> tuple[int, int]:
    """(rate, channels) of raw pcm16 from the content type's parameters; 400 unless both are sane."""
    try:
        rate, channels = int(params.get("rate", DEFAULT_RAW_RATE)), int(params.get("channels", 1))
    except ValueError:
        rate = channels = 0
    if not RAW_RATES[0] <= rate <= RAW_RATES[1] or not 1 <= channels <= 8:
        raise AudioError(
            f"Raw pcm16 needs a rate from {RAW_RATES[0]} to {RAW_RATES[1]} Hz and 1 to 8 channels "
            f"(Content-Type: audio/pcm;rate=24000); got rate={params.get('rate')!r}, "
            f"channels={params.get('channels')!r}.",
            code="invalid_audio_format",
        )
    return rate, channels


def _too_long(limits: AudioLimits) -> AudioError:
    return AudioError(
        f"The audio is longer than this server's limit of {limits.max_seconds:g} seconds.", "audio_too_long"
    )


def _read_pcm16_file(file: BinaryIO, spool: _Spool) -> bool:
    """Whether the upload was 16 kHz mono 16-bit WAV or FLAC, read whole into `spool` by libsndfile. Any
    other file, and one that ends before its header says (PyAV's decoding then decides what a broken
    recording yields), is left for PyAV: rewound, with nothing spooled."""
    try:
        sound = soundfile.SoundFile(file)
    except soundfile.SoundFileError:  # not a format libsndfile reads, or broken from its start
        file.seek(0)
        return False
    with sound:
        layout = (sound.format, sound.subtype, sound.samplerate, sound.channels)
        if layout in LIBSNDFILE_LAYOUTS:
            spool.check(sound.frames / SAMPLE_RATE)
            try:
                for block in sound.blocks(BLOCK_BYTES // 2, dtype="int16"):
                    spool.write(block)
            except soundfile.SoundFileError:  # broken part way: counted short below
                pass
            if spool.samples == sound.frames:
                return True
    spool.restart()
    file.seek(0)
    return False


def _decode_container(file: BinaryIO, spool: _Spool) -> None:
    # s16, exactly as faster_whisper.decode_audio decodes, so results match in-process runs.
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    try:
        container = av.open(file, mode="r", metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise _undecodable(exc) from exc
    with container:
        if not container.streams.audio:
            raise AudioError("The file has no audio stream.")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or 0
        if not RATES[0] <= rate <= RATES[1]:
            raise AudioError(
                f"The audio's sample rate ({rate} Hz) is not one of speech: {RATES[0]} to {RATES[1]} Hz.",
                code="invalid_audio_format",
            )
        if stream.duration is not None and stream.time_base is not None:
            spool.check(float(stream.duration * stream.time_base))
        elif container.duration is not None:
            spool.check(container.duration / av.time_base)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    spool.write(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            if spool.samples < SAMPLE_RATE * BROKEN_AFTER_SECONDS:
                raise _undecodable(exc) from exc
            # A recording cut short (a recorder that crashed): what decoded is transcribed, as ffmpeg would.
            logger.warning("audio broken after %.1f s (%s): transcribing what decoded", spool.samples / 16e3, exc)
        for out in resampler.resample(None):
            spool.write(out.to_ndarray().reshape(-1))


def _undecodable(exc: av.FFmpegError) -> AudioError:
    reason = getattr(exc, "strerror", None) or exc
    return AudioError(f"The audio file could not be decoded ({reason}); send any format ffmpeg reads.")


def _decode_raw_pcm16(file: BinaryIO, raw: tuple[int, int], spool: _Spool) -> None:
    rate, channels = raw
    frame_bytes = 2 * channels
    file.seek(0, 2)
    size = file.tell()
    file.seek(0)
    if size % frame_bytes:
        raise AudioError("Raw pcm16 must be whole little-endian 16-bit frames.")
    spool.check(size / frame_bytes / rate)
    if rate == SAMPLE_RATE and channels == 1:  # already what workers take: copied as it is
        while block := file.read(BLOCK_BYTES):
            spool.write(np.frombuffer(block, "<i2"))
        return
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    while block := file.read(BLOCK_BYTES - BLOCK_BYTES % frame_bytes):
        pcm = np.frombuffer(block, "<i2").reshape(-1, channels).mean(axis=1)
        frame = av.AudioFrame.from_ndarray(np.rint(pcm).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for out in resampler.resample(frame):
            spool.write(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):
        spool.write(out.to_ndarray().reshape(-1))
