"""Realtime transcription latency and interim cadence, beside plain file requests to the same router.

    .venv/bin/python -m bench.realtime [--sessions 1 4 8] [--clips 3] [--rounds 3] [--silence-ms 500]

Starts `servers/router.py` (bundled tiny.en, CPU). For each session count N, N Realtime sessions each
stream clips of the dev corpus in real time (24 kHz pcm16, 50 ms appends), each clip followed by
1.2 s of silence, with server VAD. For every turn it measures:

- after window: from the end of the VAD silence window (end of speech + silence_duration_ms, placed
  on the wall clock by the audio's own timeline) to `...transcription.completed`;
- after speech: the same from the end of speech (so it includes the silence window itself);
- interim cadence: the seconds between consecutive `...transcription.delta` events while the speaker
  is talking, and the time from the start of speech to the first one.

The baseline, in the same run: the same clips POSTed as files to /v1/audio/transcriptions by N
closed-loop clients: the latency of getting a transcript without streaming.

Each session count runs `--rounds` times (sessions, then files) and the percentiles pool every round's
turns: a p50 over one round's dozen turns moves by tens of milliseconds from run to run on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from itertools import pairwise

import httpx

from tests.helpers import Clip, ServerProcess, corpus
from tests.realtime import TRANSCRIPTION, Recording, encode, silence, stream

PAUSE_S = 1.2


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def one_session(url: str, clips: list[Clip], silence_ms: int) -> Recording:
    session = {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms}}},
        },
    }
    pieces = [silence(0.3)] + [p for c in clips for p in (encode(c.path), silence(PAUSE_S))]
    return await stream(url, pieces, session=session, speed=1.0, timeout=600)


def turns(recording: Recording, silence_ms: int) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per turn: latency after the window, after speech, delta intervals, first-delta delay."""
    at = {(e["type"], e.get("item_id")): t for t, e in recording.events}
    after_window, after_speech, intervals, first = [], [], [], []
    for stopped in recording.of("input_audio_buffer.speech_stopped"):
        item = stopped["item_id"]
        done = at.get((f"{TRANSCRIPTION}.completed", item))
        if done is None:
            continue
        speech_end = stopped["audio_end_ms"] / 1000  # audio time = wall time since the first append
        after_speech.append(done - speech_end)
        after_window.append(done - speech_end - silence_ms / 1000)
        started = next(e for e in recording.of("input_audio_buffer.speech_started") if e["item_id"] == item)
        speaking = [
            t
            for t, e in recording.events
            if e["type"] == f"{TRANSCRIPTION}.delta" and e["item_id"] == item and t <= speech_end
        ]
        if speaking:
            first.append(speaking[0] - started["audio_start_ms"] / 1000)
            intervals += [b - a for a, b in pairwise(speaking)]
    return after_window, after_speech, intervals, first


def file_latencies(url: str, clips: list[list[Clip]]) -> list[float]:
    """Each client POSTs its clips one after another; all clients at once."""

    async def client(http: httpx.AsyncClient, mine: list[Clip]) -> list[float]:
        latencies = []
        for clip in mine:
            start = time.perf_counter()
            response = await http.post(
                url + "/v1/audio/transcriptions",
                files={"file": (clip.path.name, clip.path.read_bytes(), "audio/flac")},
                data={"model": "tiny.en"},
            )
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)
        return latencies

    async def run() -> list[float]:
        async with httpx.AsyncClient(timeout=600) as http:
            results = await asyncio.gather(*(client(http, mine) for mine in clips))
        return [x for r in results for x in r]

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--clips", type=int, default=3, help="clips per session")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per session count, pooled")
    parser.add_argument("--silence-ms", type=int, default=500, help="the sessions' silence_duration_ms")
    args = parser.parse_args()
    pool = [c for c in corpus("dev") if 3 <= c.duration <= 12]
    print(
        f"tiny.en on CPU, server VAD silence {args.silence_ms} ms, {args.clips} clips per session "
        f"streamed in real time, {args.rounds} rounds pooled; baseline: the same clips as file requests"
    )
    print(
        "| sessions | turns | completed after window p50 / p95 (s) | after speech p50 / p95 (s) | "
        "delta interval p50 / p95 (s) | first delta p50 (s) | file request p50 / p95 (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    with ServerProcess("servers/router.py", name="bench-realtime") as router:
        url = router.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription&model=tiny.en"
        asyncio.run(one_session(url, pool[:1], args.silence_ms))  # warm-up
        for n in args.sessions:
            assigned = [[pool[(s * args.clips + k) % len(pool)] for k in range(args.clips)] for s in range(n)]

            async def sessions(assigned: list[list[Clip]] = assigned) -> list[Recording]:
                return await asyncio.gather(*(one_session(url, mine, args.silence_ms) for mine in assigned))

            measured, files = [], []
            for _ in range(args.rounds):
                measured += [turns(r, args.silence_ms) for r in asyncio.run(sessions())]
                files += file_latencies(router.url, assigned)
            window, speech, intervals, first = ([x for m in measured for x in m[i]] for i in range(4))
            print(
                f"| {n} | {len(window)} | {percentile(window, 50):.2f} / {percentile(window, 95):.2f} | "
                f"{percentile(speech, 50):.2f} / {percentile(speech, 95):.2f} | "
                f"{percentile(intervals, 50):.2f} / {percentile(intervals, 95):.2f} | {percentile(first, 50):.2f} | "
                f"{percentile(files, 50):.2f} / {percentile(files, 95):.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
