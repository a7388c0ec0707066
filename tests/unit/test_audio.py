"""Uploads decoded into spooled 16 kHz PCM, and long audio cut into windows at silences."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
from faster_whisper import decode_audio

from common.audio import Audio, AudioError, AudioLimits, Cancelled, decode
from common.errors import ApiError
from common.windows import Chunking, Window, plan
from tests.helpers import corpus

CLIP = corpus("dev")[0]
LJ = next(clip for clip in corpus("long") if clip.id.startswith("lj"))


@pytest.fixture
def limits(tmp_path: Path) -> AudioLimits:
    return AudioLimits(max_seconds=600, spool=tmp_path)


def decoded(data: bytes, content_type: str | None, limits: AudioLimits) -> Iterator[Audio]:
    audio = decode(io.BytesIO(data), content_type, limits)
    try:
        yield audio
    finally:
        audio.delete()


def test_a_container_decodes_exactly_as_faster_whisper_does(limits: AudioLimits) -> None:
    for audio in decoded(CLIP.path.read_bytes(), "audio/flac", limits):
        assert np.array_equal(audio.read(), decode_audio(str(CLIP.path)))
        assert audio.read(16_000, 32_000).tolist() == audio.read()[16_000:32_000].tolist()


@pytest.mark.parametrize(
    ("kind", "rate", "channels"),
    [("WAV", 16_000, 1), ("FLAC", 16_000, 1), ("WAV", 44_100, 1), ("FLAC", 16_000, 2), ("OGG", 16_000, 1)],
)
def test_every_file_decodes_exactly_as_faster_whisper_does(
    limits: AudioLimits, tmp_path: Path, kind: str, rate: int, channels: int
) -> None:
    """16 kHz mono 16-bit WAV and FLAC are read by libsndfile, the rest by PyAV: the same samples either way."""
    speech = decode_audio(str(CLIP.path), sampling_rate=rate, split_stereo=False)
    path = tmp_path / f"clip.{kind.lower()}"
    soundfile.write(path, np.stack([speech] * channels, axis=1), rate, format=kind)
    for audio in decoded(path.read_bytes(), None, limits):
        assert np.array_equal(audio.read(), decode_audio(str(path)))
        assert audio.duration == pytest.approx(len(speech) / rate, abs=0.01)


def test_raw_pcm16_at_16_khz_is_taken_as_it_is_and_other_rates_resampled(limits: AudioLimits) -> None:
    pcm = (np.sin(np.arange(48_000) / 10) * 8000).astype("<i2")
    for audio in decoded(pcm.tobytes(), "audio/pcm;rate=16000", limits):
        assert np.array_equal(audio.read(), pcm / 32768.0)
    for audio in decoded(pcm.tobytes(), "audio/pcm;rate=48000", limits):
        assert audio.samples == pytest.approx(16_000, abs=32)
    stereo = np.repeat(pcm, 2)  # the same samples on both channels
    for audio in decoded(stereo.tobytes(), "audio/pcm;rate=16000;channels=2", limits):
        assert audio.samples == pytest.approx(48_000, abs=32)


@pytest.mark.parametrize("rate", ["1", "abc", "1e9", "7999", "48001", "-16000"])
def test_raw_pcm16_needs_a_rate_from_8_to_48_khz(limits: AudioLimits, rate: str) -> None:
    with pytest.raises(AudioError) as error:
        decode(io.BytesIO(bytes(3200)), f"audio/pcm;rate={rate}", limits)
    assert error.value.code == "invalid_audio_format" and error.value.status == 400
    assert not list(limits.spool.iterdir())


def test_length_is_refused_before_decoding_when_it_is_known(limits: AudioLimits) -> None:
    with pytest.raises(AudioError, match="longer than"):  # 1 MB of raw pcm16 at 8 kHz: 65 s
        decode(io.BytesIO(bytes(1 << 20)), "audio/pcm;rate=8000", AudioLimits(60, limits.spool))
    with pytest.raises(AudioError, match="longer than"):  # FLAC: from its header
        decode(LJ.path.open("rb"), "audio/flac", AudioLimits(60, limits.spool))
    assert not list(limits.spool.iterdir())


def test_deleted_audio_cancels_its_reader(limits: AudioLimits) -> None:
    audio = decode(CLIP.path.open("rb"), "audio/flac", limits)
    assert not audio.cancelled
    audio.delete()
    assert audio.cancelled
    with pytest.raises(Cancelled):
        audio.read(0, 100)


def test_chunking_strategy_is_read_as_openai_sends_it() -> None:
    assert Chunking.parse(None, {}) is None
    assert Chunking.parse("auto", {}) == Chunking()
    assert Chunking.parse(None, {"type": "server_vad", "silence_duration_ms": "500"}) == Chunking(
        silence_duration_ms=500
    )
    assert Chunking.parse(json.dumps({"type": "server_vad", "threshold": 0.3}), {}) == Chunking(threshold=0.3)
    for value, fields in [
        ("loud", {}),
        (None, {"type": "semantic_vad"}),
        (None, {"threshold": "high"}),
        (None, {"threshold": "1.5"}),
        (json.dumps({"type": "server_vad", "depth": 3}), {}),
    ]:
        with pytest.raises(ApiError) as error:
            Chunking.parse(value, fields)
        assert error.value.param == "chunking_strategy" and error.value.status == 400


def test_short_audio_is_one_window_unless_chunking_is_asked_for(limits: AudioLimits) -> None:
    for audio in decoded(CLIP.path.read_bytes(), "audio/flac", limits):
        assert list(plan(audio, 30, None)) == [Window(0, audio.samples)]
        speech = list(plan(audio, 30, Chunking()))
        assert len(speech) == 1 and 0 <= speech[0].start < 8000 and speech[0].end <= audio.samples


def test_long_audio_is_cut_at_silences_into_windows(limits: AudioLimits) -> None:
    sentences = json.loads((LJ.path.parent.parent / "manifest.jsonl").read_text().splitlines()[0])["segments"]
    for audio in decoded(LJ.path.read_bytes(), "audio/flac", limits):
        windows = list(plan(audio, 30, None))
        assert all(0 < w.end - w.start <= 30 * 16_000 for w in windows)
        assert all(a.end <= b.start for a, b in itertools.pairwise(windows))
        whole = [  # sentences inside one window: a cut falls in a pause, mostly between sentences
            s["id"]
            for s in sentences
            if any(w.start <= s["start"] * 16_000 + 1600 and s["end"] * 16_000 - 1600 <= w.end for w in windows)
        ]
        assert len(whole) >= 0.9 * len(sentences)


def test_digital_silence_has_no_windows(limits: AudioLimits) -> None:
    for audio in decoded(bytes(16_000 * 2 * 90), "audio/pcm;rate=16000", limits):
        assert list(plan(audio, 30, None)) == []


def test_a_recording_cut_short_is_decoded_up_to_the_break(limits: AudioLimits) -> None:
    whole = LJ.path.read_bytes()
    for audio in decoded(whole[:200_000], "audio/flac", limits):  # a recorder that crashed: a few seconds
        assert 1 < audio.duration < 30
        assert np.array_equal(audio.read(), decode_audio(str(LJ.path))[: audio.samples])
    with pytest.raises(AudioError, match="could not be decoded"):  # barely a frame: not a recording
        decode(io.BytesIO(whole[:3_000]), "audio/flac", limits)
    assert not list(limits.spool.iterdir())
