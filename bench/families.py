"""Pieces the family benchmarks share: a server's throughput over a corpus, and decoding as servers do."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np

from bench.transcription import Result, closed_loop
from common.audio import Audio, AudioLimits, decode
from tests.helpers import Clip, ServerProcess


def spooled(path: Path) -> Audio:
    """The file decoded as the servers do it, into a spool file as a job's audio (faster_whisper.decode_audio
    runs gc.collect() on every call, which costs ~0.4 s in a process that has imported NeMo)."""
    with path.open("rb") as f:
        return decode(f, None, AudioLimits(max_seconds=24 * 3600))


def decode_audio(path: Path) -> np.ndarray:
    """The file as 16 kHz float32 samples, decoded as the servers do it."""
    audio = spooled(path)
    try:
        return audio.read()
    finally:
        audio.delete()


def server_rtfx(script: str, args: list[str], clips: list[Clip], concurrency: int, rounds: int) -> float:
    """RTFx of `python <script> --name bench <args>` over `rounds` passes of `clips` from N closed-loop clients."""
    audio_seconds = sum(c.duration for c in clips) * rounds
    with (
        ServerProcess(script, "--name", "bench", *args, name=f"bench-{Path(script).stem}") as server,
        httpx.Client(timeout=600) as http,
    ):

        def one(clip: Clip, data: bytes) -> Result:
            start = time.perf_counter()
            response = http.post(
                server.url + "/v1/audio/transcriptions",
                data={"model": "bench"},
                files={"file": (clip.path.name, data, "audio/flac")},
            )
            response.raise_for_status()
            latency = time.perf_counter() - start
            return Result(clip, latency, latency, response.json()["text"])

        closed_loop(clips[:4], 2, one)  # warm-up
        wall = sum(closed_loop(clips, concurrency, one)[0] for _ in range(rounds))
    return audio_seconds / wall
