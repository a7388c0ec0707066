"""Transcription throughput and latency: the server beside in-process faster-whisper, in one run.

    .venv/bin/python -m bench.transcription [--corpus dev untranscribed] [--concurrency 1 4 8 16]

Starts `servers/faster_whisper.py` on its defaults (bundled tiny.en, beam 5), sends every clip of the
corpus with `stream=true` from N closed-loop clients, and records per request the time to the first
SSE delta and to the end. Then it stops the server and runs faster-whisper in this process on the
same model and settings, N threads over one model, recording the first segment and the end. Both
sides read the same compressed files, so both include decoding.

The in-process baseline is the best configuration measured here: one model with num_workers=cores
and cpu_threads=1 shared by N threads (at N=1 that is sequential `transcribe()` on one thread, which
beats cpu_threads=cores for tiny.en; that one is printed too). The printed ratios are what matter:
the machine is noisy, absolute numbers drift between runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from servers.faster_whisper import FALLBACK_TEMPERATURES, model_path
from tests.helpers import Clip, ServerProcess, corpus, wer


@dataclass
class Result:
    clip: Clip
    latency: float
    first: float  # time to the first delta (server) or first segment (in-process)
    text: str


@dataclass
class Run:
    name: str
    concurrency: int
    wall: float
    results: list[Result]

    @property
    def rtfx(self) -> float:
        return sum(r.clip.duration for r in self.results) / self.wall

    def percentile(self, attribute: str, q: float) -> float:
        values = sorted(getattr(r, attribute) for r in self.results)
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    def wer(self) -> float | None:
        scored = [r for r in self.results if r.clip.text]
        if not scored:
            return None
        return wer([r.clip.text for r in scored], [r.text for r in scored])


def closed_loop(clips: list[Clip], concurrency: int, one: Callable[[Clip, bytes], Result]) -> tuple[float, list]:
    """`concurrency` clients, each sending the next clip as soon as its previous one is answered."""
    audio = {c.id: c.path.read_bytes() for c in clips}
    pending = list(reversed(clips))
    results: list[Result] = []
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not pending:
                    return
                clip = pending.pop()
            result = one(clip, audio[clip.id])
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, results


def server_request(http: httpx.Client, url: str) -> Callable[[Clip, bytes], Result]:
    def one(clip: Clip, data: bytes) -> Result:
        start = time.perf_counter()
        first = None
        text = ""
        files = {"file": (clip.path.name, data, "audio/flac")}
        with http.stream(
            "POST", url + "/v1/audio/transcriptions", files=files, data={"model": "whisper-1", "stream": "true"}
        ) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if event["type"] == "transcript.text.delta" and first is None:
                    first = time.perf_counter() - start
                elif event["type"] == "transcript.text.done":
                    text = event["text"]
        latency = time.perf_counter() - start
        return Result(clip, latency, latency if first is None else first, text)

    return one


def inprocess_request(model) -> Callable[[Clip, bytes], Result]:
    def one(clip: Clip, data: bytes) -> Result:
        start = time.perf_counter()
        segments, _ = model.transcribe(io.BytesIO(data), beam_size=5, temperature=FALLBACK_TEMPERATURES)
        first = None
        texts = []
        for s in segments:
            first = first if first is not None else time.perf_counter() - start
            texts.append(s.text)
        latency = time.perf_counter() - start
        return Result(clip, latency, latency if first is None else first, "".join(texts).strip())

    return one


def bench_server(clips: list[Clip], levels: list[int], server_args: list[str]) -> list[Run]:
    server = ServerProcess("servers/faster_whisper.py", *server_args, name="bench").wait_healthy()
    runs = []
    try:
        with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64)) as http:
            one = server_request(http, server.url)
            closed_loop(clips[:2], 1, one)  # warm-up
            for n in levels:
                wall, results = closed_loop(clips, n, one)
                runs.append(Run("server", n, wall, results))
                print(f"  server      c={n:<2} RTFx {runs[-1].rtfx:5.1f}", flush=True)
    finally:
        server.stop()
    return runs


def bench_inprocess(clips: list[Clip], levels: list[int]) -> list[Run]:
    from faster_whisper import WhisperModel

    cores = os.cpu_count() or 1
    path = model_path("bundled")
    sequential = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=cores)
    parallel = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=1, num_workers=cores)
    closed_loop(clips[:2], 1, inprocess_request(sequential))  # warm-up
    wall, _ = closed_loop(clips, 1, inprocess_request(sequential))
    print(f"  in-process  c=1  RTFx {sum(c.duration for c in clips) / wall:5.1f} (sequential, cpu_threads={cores})")
    runs = []
    for n in levels:
        closed_loop(clips[:2], 1, inprocess_request(parallel))  # warm-up
        wall, results = closed_loop(clips, n, inprocess_request(parallel))
        runs.append(Run("in-process", n, wall, results))
        print(f"  in-process  c={n:<2} RTFx {runs[-1].rtfx:5.1f}", flush=True)
    return runs


def table(server: list[Run], inprocess: list[Run]) -> str:
    rows = [
        "| clients | RTFx server | RTFx in-process | ratio | p50 latency server / in-process (s) | "
        "p95 latency server / in-process (s) | p50 first delta / first segment (s) | WER server / in-process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, p in zip(server, inprocess, strict=True):
        s_wer, p_wer = s.wer(), p.wer()
        wers = "n/a" if s_wer is None else f"{s_wer:.2%} / {p_wer:.2%}"
        rows.append(
            f"| {s.concurrency} | {s.rtfx:.1f} | {p.rtfx:.1f} | {s.rtfx / p.rtfx:.2f} | "
            f"{s.percentile('latency', 0.5):.2f} / {p.percentile('latency', 0.5):.2f} | "
            f"{s.percentile('latency', 0.95):.2f} / {p.percentile('latency', 0.95):.2f} | "
            f"{s.percentile('first', 0.5):.2f} / {p.percentile('first', 0.5):.2f} | {wers} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", default=["dev", "untranscribed"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument(
        "--unbatched-at",
        type=int,
        default=8,
        help="also run the server with max_batch_size=1 at this concurrency (0: skip)",
    )
    parser.add_argument("--limit", type=int, default=0, help="use only the first N clips of each corpus folder")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="extra server option, e.g. --server-arg=--parallel=2"
    )
    args = parser.parse_args()

    clips = [c for name in args.corpus for c in (corpus(name)[: args.limit] if args.limit else corpus(name))]
    audio = sum(c.duration for c in clips)
    print(f"{len(clips)} clips, {audio / 60:.1f} min of audio ({', '.join(args.corpus)}), {os.cpu_count()} cores")
    server = bench_server(clips, args.concurrency, args.server_arg)
    unbatched = []
    if args.unbatched_at:
        print("  (server without batching: --max-batch-size 1)")
        unbatched = bench_server(clips, [args.unbatched_at], [*args.server_arg, "--max-batch-size", "1"])
    inprocess = bench_inprocess(clips, args.concurrency)
    print()
    print(table(server, inprocess))
    mismatched = sum(
        a.text != b.text
        for s, p in zip(server, inprocess, strict=True)
        for a, b in zip(
            sorted(s.results, key=lambda r: r.clip.id), sorted(p.results, key=lambda r: r.clip.id), strict=True
        )
    )
    print(f"\nclips whose text differs between server and in-process: {mismatched}")
    for run in unbatched:
        batched = next(s for s in server if s.concurrency == run.concurrency)
        print(
            f"\nbatching at c={run.concurrency}: RTFx {batched.rtfx:.1f} with, {run.rtfx:.1f} without "
            f"(max_batch_size=1): x{batched.rtfx / run.rtfx:.2f}"
        )
    ratios = [s.rtfx / p.rtfx for s, p in zip(server, inprocess, strict=True)]
    print(f"median of per-level throughput ratios: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
