"""Long audio in windows: where a request's audio is cut, so that a family decodes it window by window,
several windows at once, and never the whole recording in one piece.

OpenAI's `chunking_strategy` says how: `"auto"`, or `{"type": "server_vad", "threshold",
"prefix_padding_ms", "silence_duration_ms"}`, cuts at silences that Silero VAD (the ONNX model
faster-whisper ships) finds. Without it, audio longer than the model's window is cut as "auto" would,
and shorter audio is one window, decoded exactly as the model decodes a whole file. Stretches without
speech between windows are not decoded at all, and times are kept: each window knows where it starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from common.audio import SAMPLE_RATE, Audio
from common.errors import ApiError

VAD_BLOCK_SECONDS = 60  # VAD reads the audio this much at a time
SILENT = 2**-12  # a block whose loudest sample is below this (-72 dBFS) holds no speech
EDGE = 2 * 512  # speech this close to both sides of a block's edge is one region (two VAD frames)


@dataclass(frozen=True)
class Window:
    """A stretch of a request's audio, in samples, decoded as one piece."""

    start: int
    end: int

    @property
    def offset(self) -> float:
        """Seconds from the start of the request's audio: what the window's times are shifted by."""
        return self.start / SAMPLE_RATE


@dataclass(frozen=True)
class Chunking:
    """OpenAI's `server_vad` chunking settings ("auto" is these defaults)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 200

    @classmethod
    def parse(cls, value: str | None, fields: dict[str, str | None]) -> Chunking | None:
        """From the form: `chunking_strategy` ("auto", or the object as JSON) or its flattened
        `chunking_strategy[key]` fields, as the `openai` SDK sends them; None when absent."""
        settings: dict[str, object] = {key: field for key, field in fields.items() if field is not None}
        if value is not None and value != "auto":
            try:
                settings = json.loads(value)
            except ValueError:
                raise _invalid(f"'{value}' is neither \"auto\" nor a server_vad object") from None
        if value is None and not settings:
            return None
        if not isinstance(settings, dict) or settings.pop("type", "server_vad") != "server_vad":
            raise _invalid("its type must be server_vad")
        unknown = set(settings) - set(cls.__dataclass_fields__)
        if unknown:
            raise _invalid(f"unknown fields {sorted(unknown)}")
        try:
            chunking = cls(**{key: type(getattr(cls, key))(number) for key, number in settings.items()})
        except (TypeError, ValueError):
            raise _invalid("threshold is a number, the durations whole milliseconds") from None
        if not 0 <= chunking.threshold <= 1 or not 0 <= chunking.prefix_padding_ms <= 10_000:
            raise _invalid("threshold goes from 0 to 1, prefix_padding_ms from 0 to 10000")
        if not 0 <= chunking.silence_duration_ms <= 10_000:
            raise _invalid("silence_duration_ms goes from 0 to 10000")
        return chunking


def _invalid(why: str) -> ApiError:
    return ApiError(400, f"Invalid chunking_strategy: {why}.", param="chunking_strategy", code="invalid_value")


def plan(audio: Audio, window_seconds: float, chunking: Chunking | None) -> Iterator[Window]:
    """The windows to decode `audio` in, in order, at most `window_seconds` each; found as the audio is
    read, so that the first can be decoded while VAD reads on.

    Speech regions are gathered into a window while they fit; when one does not, the window is cut in
    the longest pause of its second half (between sentences, more often than not), and what follows the
    cut starts the next window.
    """
    if chunking is None and audio.duration <= window_seconds:
        yield Window(0, audio.samples)
        return
    chunking = chunking or Chunking()
    most = int(window_seconds * SAMPLE_RATE)
    before = chunking.prefix_padding_ms * SAMPLE_RATE // 1000
    after = chunking.silence_duration_ms * SAMPLE_RATE // 1000
    done = 0  # where the last window ended: the next one starts no earlier

    def window(regions: list[tuple[int, int]]) -> Window:
        nonlocal done
        start = max(regions[0][0] - before, done)
        done = min(regions[-1][1] + after, audio.samples, start + most)
        return Window(start, done)

    def span(regions: list[tuple[int, int]]) -> int:
        return regions[-1][1] + after - max(regions[0][0] - before, done)

    regions: list[tuple[int, int]] = []
    for region in _speech(audio, chunking, window_seconds):
        regions.append(region)
        while span(regions) > most:
            if len(regions) == 1:  # speech longer than a window, without a pause: cut where it must be
                start = max(region[0] - before, done)
                yield window([(start + before, start + most - after)])
                regions = [(done, region[1])]
                continue
            fits = [k for k in range(1, len(regions)) if span(regions[:k]) <= most]
            half = [k for k in fits if span(regions[:k]) >= most // 2] or fits or [1]
            cut = max(half, key=lambda k: regions[k][0] - regions[k - 1][1])  # the longest pause
            yield window(regions[:cut])
            regions = regions[cut:]
    if regions:
        yield window(regions)


def _speech(audio: Audio, chunking: Chunking, window_seconds: float) -> Iterator[tuple[int, int]]:
    """Speech regions (samples), merged across the blocks the audio is read in."""
    options = VadOptions(
        threshold=chunking.threshold,
        min_silence_duration_ms=chunking.silence_duration_ms,
        max_speech_duration_s=window_seconds,
        speech_pad_ms=0,
    )
    block = VAD_BLOCK_SECONDS * SAMPLE_RATE
    pending: tuple[int, int] | None = None
    for first in range(0, audio.samples, block):
        samples = audio.read(first, first + block)
        if not samples.size or np.abs(samples).max() < SILENT:
            continue  # digital silence: nothing for VAD to find, at no cost
        for region in get_speech_timestamps(samples, options):
            start, end = first + region["start"], first + region["end"]
            if pending is not None and pending[1] >= first - EDGE and region["start"] <= EDGE:
                pending = (pending[0], end)  # speech that went on across the blocks' edge
                continue
            if pending is not None:
                yield pending
            pending = (start, end)
    if pending is not None:
        yield pending
