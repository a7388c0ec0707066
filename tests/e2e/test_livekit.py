"""LiveKit Agents' `openai.STT` plugin pointed at the router: batch `recognize()` and realtime `stream()`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import stt, utils
from livekit.plugins import openai as livekit_openai

from tests.helpers import ServerProcess, corpus, normalize, wer
from tests.realtime import encode, silence

RATE = 48_000  # what LiveKit rooms deliver; the plugin resamples to 24 kHz itself
FRAME_MS = 20


@pytest.fixture(scope="module")
def router() -> Iterator[ServerProcess]:
    with ServerProcess("servers/router.py", "--api-key", "sk-livekit", name="router-livekit") as server:
        yield server


def frames(audio: bytes) -> list[rtc.AudioFrame]:
    step = RATE * FRAME_MS // 1000
    samples = np.frombuffer(audio, "<i2")
    return [
        rtc.AudioFrame(samples[i : i + step].tobytes(), RATE, 1, len(samples[i : i + step]))
        for i in range(0, len(samples), step)
    ]


def plugin(router: ServerProcess, model: str, **options: object) -> livekit_openai.STT:
    return livekit_openai.STT(model=model, base_url=router.url + "/v1", api_key="sk-livekit", language="en", **options)


@pytest.mark.parametrize("model", ["tiny.en", "whisper-1"])  # whisper-1 makes the plugin ask for verbose_json
def test_recognize(router: ServerProcess, model: str) -> None:
    clip = corpus("dev")[3]

    async def run() -> stt.SpeechEvent:
        async with utils.http_context.open():
            return await plugin(router, model).recognize(frames(encode(clip.path, RATE)))

    event = asyncio.run(run())
    assert event.type == stt.SpeechEventType.FINAL_TRANSCRIPT
    assert wer([clip.text], [event.alternatives[0].text]) <= 0.15


def test_realtime_stream_gives_interim_and_final_transcripts(router: ServerProcess) -> None:
    chosen = [c for c in corpus("dev") if 6 <= c.duration <= 12][:2]
    audio = silence(0.5, RATE) + b"".join(encode(c.path, RATE) + silence(1.5, RATE) for c in chosen)

    async def run() -> list[stt.SpeechEvent]:
        async with utils.http_context.open():
            speech = plugin(router, "tiny.en", use_realtime=True)
            stream = speech.stream()
            events: list[stt.SpeechEvent] = []

            async def push() -> None:
                for frame in frames(audio):
                    stream.push_frame(frame)
                    await asyncio.sleep(FRAME_MS / 1000 / 2)  # twice real time

            async def collect() -> None:
                async for event in stream:
                    events.append(event)

            def count(kind: stt.SpeechEventType) -> int:
                return sum(e.type == kind for e in events)

            collector = asyncio.create_task(collect())
            await push()
            async with asyncio.timeout(120):  # every turn that ended gets its final transcript
                while count(stt.SpeechEventType.END_OF_SPEECH) < len(chosen) or count(
                    stt.SpeechEventType.FINAL_TRANSCRIPT
                ) < count(stt.SpeechEventType.END_OF_SPEECH):
                    await asyncio.sleep(0.1)
            collector.cancel()
            await stream.aclose()
            await speech.aclose()
            return events

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    finals = [e.alternatives[0].text for e in events if e.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    interims = [e.alternatives[0].text for e in events if e.type == stt.SpeechEventType.INTERIM_TRANSCRIPT]
    assert kinds.count(stt.SpeechEventType.START_OF_SPEECH) >= len(chosen)
    assert kinds.count(stt.SpeechEventType.END_OF_SPEECH) >= len(chosen)
    assert interims, "no interim transcript"
    assert normalize(interims[0]).split()[:1] == normalize(finals[0]).split()[:1]
    assert wer([" ".join(c.text for c in chosen)], [" ".join(finals)]) <= 0.15
    usage = [e.recognition_usage for e in events if e.type == stt.SpeechEventType.RECOGNITION_USAGE]
    assert usage and all(u.audio_duration > 0 for u in usage)
