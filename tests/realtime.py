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


def pcm16(path: Path, rate: int = 24_000) -> bytes:
    """A file's audio as mono pcm16 little-endian at `rate` (what Realtime clients send)."""
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        frames = [out for frame in container.decode(audio=0) for out in resampler.resample(frame)]
        frames += resampler.resample(None)
    return np.concatenate([f.to_ndarray()[0] for f in frames]).astype("<i2").tobytes()


def silence(seconds: float, rate: int = 24_000) -> bytes:
    return bytes(2 * int(seconds * rate))


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
                    await ws.send(
                        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
                    )
                    sent += len(chunk) / (2 * rate)
                    await asyncio.sleep(max(0.0, start + sent / speed - time.monotonic()))
                recording.speech_sent_at.append(time.monotonic() - start)

        async def receive() -> None:
            async for message in ws:
                recording.events.append((time.monotonic() - start, json.loads(message)))
                committed = {e["item_id"] for e in recording.of("input_audio_buffer.committed")}
                finished = {e["item_id"] for _, e in recording.events if e["type"].endswith((".completed", ".failed"))}
                if sender.done() and committed <= finished and len(finished) >= (expect_items or 1):
                    return

        sender = asyncio.create_task(send())
        await asyncio.wait_for(asyncio.gather(sender, receive()), timeout)
    return recording
