"""A Realtime transcription client for tests and benchmarks: streams audio at a chosen pace over a real
WebSocket and records every server event with the time it arrived."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import websockets

TRANSCRIPTION = "conversation.item.input_audio_transcription"


def encode(path: Path, rate: int = 24_000, codec: str = "pcm_s16le") -> bytes:
    """A file's audio as raw mono samples at `rate`: pcm16 little-endian, or G.711 (pcm_mulaw, pcm_alaw)."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
        frames += resampler.resample(None)
    samples = np.concatenate([f.to_ndarray()[0] for f in frames]).astype("<i2")
    if codec == "pcm_s16le":
        return samples.tobytes()
    encoder = av.CodecContext.create(codec, "w")
    encoder.sample_rate, encoder.layout, encoder.format = rate, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
    frame.sample_rate = rate
    return b"".join(bytes(packet) for packet in [*encoder.encode(frame), *encoder.encode(None)])


def append_event(chunk: bytes) -> str:
    """The `input_audio_buffer.append` event that carries `chunk`."""
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})


def silence(seconds: float, rate: int = 24_000, codec: str = "pcm_s16le") -> bytes:
    if codec == "pcm_s16le":
        return bytes(2 * int(seconds * rate))
    return {"pcm_mulaw": b"\xff", "pcm_alaw": b"\xd5"}[codec] * int(seconds * rate)  # G.711's zero


@dataclass
class Recording:
    """What one session received: (seconds since the first audio was sent, event) in arrival order."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    speech_sent_at: list[float] = field(default_factory=list)  # when each clip's last byte was sent

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    @property
    def transcript(self) -> str:
        return " ".join(e["transcript"] for e in self.of(f"{TRANSCRIPTION}.completed")).strip()


async def stream(
    url: str,
    pieces: list[bytes],
    *,
    session: dict[str, Any] | None = None,
    speed: float = 4.0,
    rate: int = 24_000,
    chunk_ms: int = 50,
    headers: dict[str, str] | None = None,
    expect_items: int | None = None,
    timeout: float = 120.0,
) -> Recording:
    """Send `session` (a session.update event), then each piece of audio in `chunk_ms` appends at `speed`
    times real time; wait until every committed item has completed or failed (at least `expect_items`)."""
    recording = Recording()
    bytes_per_chunk = rate * 2 * chunk_ms // 1000
    async with websockets.connect(url, additional_headers=headers or {}, max_size=None) as ws:
        created = json.loads(await ws.recv())
        recording.events.append((0.0, created))
        if session is not None:
            await ws.send(json.dumps(session))
        start = time.monotonic()

        async def send() -> None:
            sent = 0.0
            for piece in pieces:
                for offset in range(0, len(piece), bytes_per_chunk):
                    chunk = piece[offset : offset + bytes_per_chunk]
                    await ws.send(append_event(chunk))
                    sent += len(chunk) / (2 * rate)
                    await asyncio.sleep(max(0.0, start + sent / speed - time.monotonic()))
                recording.speech_sent_at.append(time.monotonic() - start)

        def finished() -> bool:
            committed = {e["item_id"] for e in recording.of("input_audio_buffer.committed")}
            ended = {e["item_id"] for _, e in recording.events if e["type"].endswith((".completed", ".failed"))}
            return sender.done() and committed <= ended and len(ended) >= (expect_items or 1)

        async def receive() -> None:
            while not finished():
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.2)  # wake up to see the sender finish
                except TimeoutError:
                    continue
                recording.events.append((time.monotonic() - start, json.loads(message)))

        sender = asyncio.create_task(send())
        try:
            await asyncio.wait_for(asyncio.gather(sender, receive()), timeout)
        except TimeoutError:
            raise AssertionError(f"items still pending after {timeout} s: {recording.events}") from None
    return recording
