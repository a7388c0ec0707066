"""Router overhead: the same requests through the router and straight to the family server behind it.

    .venv/bin/python -m bench.router [--requests 60] [--concurrency 16]

Starts `servers/router.py` on the default registry (bundled tiny.en loaded at start) and finds the
family server's port in /api/ps, so both paths reach the very same model process.

- Added latency: single requests with a short clip, alternating router and direct, p50 of each and
  of the paired differences.
- Throughput: the dev corpus from N closed-loop streaming clients, through the router and direct,
  twice in alternation (the machine is noisy; compare the ratio).
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx

from bench.transcription import closed_loop, server_request
from tests.helpers import ServerProcess, corpus


def one_request(http: httpx.Client, url: str, audio: bytes) -> float:
    start = time.perf_counter()
    response = http.post(
        url + "/v1/audio/transcriptions", files={"file": ("a.flac", audio, "audio/flac")}, data={"model": "whisper-1"}
    )
    response.raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60, help="latency pairs")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    router = ServerProcess("servers/router.py", name="bench-router").wait_healthy()
    try:
        family = httpx.get(router.url + "/api/ps").json()["models"][0]
        direct = f"http://127.0.0.1:{family['port']}"
        clips = corpus("dev")
        short = min(clips, key=lambda c: c.duration)
        audio = short.path.read_bytes()
        with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64)) as http:
            for url in (router.url, direct):
                one_request(http, url, audio)  # warm-up
            pairs = [
                (one_request(http, router.url, audio), one_request(http, direct, audio)) for _ in range(args.requests)
            ]
            through, straight = zip(*pairs, strict=True)
            added = [a - b for a, b in pairs]
            print(f"latency, {args.requests} requests of a {short.duration:.1f} s clip, one at a time:")
            print(
                f"  p50 via router {statistics.median(through) * 1000:.1f} ms, direct "
                f"{statistics.median(straight) * 1000:.1f} ms, p50 added {statistics.median(added) * 1000:.1f} ms"
            )

            audio_seconds = sum(c.duration for c in clips)
            rates: dict[str, list[float]] = {"router": [], "direct": []}
            for _ in range(2):
                for name, url in (("router", router.url), ("direct", direct)):
                    wall, _ = closed_loop(clips, args.concurrency, server_request(http, url))
                    rates[name].append(audio_seconds / wall)
            r, d = statistics.mean(rates["router"]), statistics.mean(rates["direct"])
            print(f"throughput, dev corpus ({len(clips)} clips), {args.concurrency} streaming clients, 2 rounds:")
            rounds = {name: ", ".join(f"{x:.1f}" for x in values) for name, values in rates.items()}
            print(
                f"  RTFx via router {r:.1f} ({rounds['router']}), direct {d:.1f} ({rounds['direct']}), "
                f"ratio {r / d:.2f}"
            )
    finally:
        router.stop()


if __name__ == "__main__":
    main()
