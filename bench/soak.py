"""Soak under faults: mixed traffic through the router while its family server is killed or hung.

    .venv/bin/python -m bench.soak [--minutes 10] [--seed 1] [--clients 4] [--baseline-seconds 30]
                                   [--fault-interval 20 40] [--faults kill stop] [--hang-seconds 5]
                                   [--timeout 120] [--long-timeout 300]

Starts `servers/router.py` on a registry of the bundled tiny.en alone with `--hang-seconds 5`, then for
--minutes sends mixed traffic from --clients threads, each picking its next request at random (seeded):

- short: a dev clip of at most 10 s, json (their latency is the figure compared with the baseline);
- long: a long/ clip, verbose_json with segment timestamps, now and then (one at a time);
- sse: a dev clip with stream=true, read to `transcript.text.done` or an error event;
- realtime: a dev clip of 3-10 s streamed at 4x real time over /v1/realtime?intent=transcription with
  server VAD, events read until every committed item is `...transcription.completed` or `.failed`;
- bad: non-audio bytes, an unknown model or a bad response_format: each must get a clean 4xx (an
  OpenAI error body), or a 5xx with one while the family server is down;
- drop: a client that leaves: a stream=true request closed after its first event, or a json request
  aborted 0.5 s after it was sent.

After a fault-free first phase (--baseline-seconds), a fault injector, at seeded random intervals
(--fault-interval), takes the family server's pid from /api/ps and either SIGKILLs its process group
(the router must notice, answer its requests in flight with 503 and restart it on the next request)
or SIGSTOPs it (the router must kill it once its /health has failed for hang-seconds; if its processes
are still there 30 s later they get SIGCONT and the fault counts as a watchdog miss).

Every answer is counted by kind: 2xx (or a completed Realtime session), clean 4xx, 5xx with an OpenAI
error body (or an SSE error event, or a `.failed` Realtime item), disconnects the client made,
unexpected answers (a 5xx without an OpenAI body, a 2xx to bad input, a stream that ends without its
last event, ...) and lost requests: no answer within the timeout, or a connection reset before any
status. Lost requests must be 0. Also: the p50/p95 latency of successful short requests in the
fault-free phase (the baseline) beside the same under faults, each fault with how long the router took
to get rid of the server and to have a new one ready, the family server's distinct pids (restarts) and
the summed RSS of the router's process tree, sampled every 0.5 s.

The machine is noisy: compare each figure with its baseline, not with another run's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import random
import signal
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import websockets

from bench.long_audio import MB, TreeMemory, long_clips, percentile, tree_rss
from tests.helpers import TINY_EN, Clip, ServerProcess, corpus, write_registry
from tests.realtime import TRANSCRIPTION, append_event, encode, silence

MODEL = TINY_EN["id"]
SHORT_MAX_S = 10.0  # dev clips this short are the "short" requests whose latency is compared
REALTIME_RATE = 24_000
REALTIME_SPEED = 4.0
REALTIME_CHUNK_MS = 50
ABORT_AFTER_S = 0.5
WATCHDOG_LIMIT_S = 30.0  # a SIGSTOPped server still there this long after the fault: a watchdog miss
READY_LIMIT_S = 90.0  # the longest the injector waits for a new family server before going on
LONG_NOT_IN_LAST_S = 30.0  # no long clip is started this close to the end of the run

# Relative frequencies of the request kinds.
WEIGHTS = {"short": 40, "sse": 14, "realtime": 14, "bad": 12, "drop_sse": 6, "drop_abort": 6, "long": 4}
LABELS = {
    "short": "short, json",
    "long": "long/ clip, verbose_json",
    "sse": "stream=true (SSE)",
    "realtime": "Realtime session",
    "bad": "bad input",
    "drop_sse": "SSE closed after 1st event",
    "drop_abort": f"json aborted after {ABORT_AFTER_S:g} s",
}
RESULTS = ("ok", "4xx", "5xx", "disconnected", "unexpected", "lost")
BAD_INPUTS = ("non-audio bytes", "unknown model", "bad response_format")


@dataclass
class Outcome:
    kind: str
    request_id: str
    start: float  # seconds since the run started
    end: float
    result: str  # one of RESULTS
    status: int | None = None
    detail: str = ""  # the error code of an answered error; what went wrong otherwise

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass
class Fault:
    kind: str  # "kill" (SIGKILL to the group) or "stop" (SIGSTOP to the group)
    at: float  # seconds since the run started
    pid: int
    gone_after: float | None = None  # until every process of the server was gone
    ready_after: float | None = None  # until /api/ps listed a new server ready
    watchdog_miss: bool = False


@dataclass
class Group:
    """A family server's processes at the moment of a fault (its process group: the router starts it in a
    session of its own)."""

    pid: int
    members: list[psutil.Process] = field(default_factory=list)

    @classmethod
    def of(cls, pid: int) -> Group:
        root = psutil.Process(pid)
        return cls(pid, [root, *root.children(recursive=True)])

    def alive(self) -> list[psutil.Process]:
        alive = []
        for process in self.members:
            with contextlib.suppress(psutil.Error):
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
        return alive


def openai_error(body: bytes) -> dict[str, Any] | None:
    """The `error` object of an OpenAI error body, or None when the body is not one."""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error if isinstance(error, dict) and {"message", "type", "code"} <= set(error) else None


def excerpt(body: bytes | str, size: int = 160) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    return " ".join(text.split())[:size]


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


class Soak:
    def __init__(self, args: argparse.Namespace, router: ServerProcess) -> None:
        self.args = args
        self.router = router
        self.ws_url = router.url.replace("http://", "ws://") + f"/v1/realtime?intent=transcription&model={MODEL}"
        dev = corpus("dev")
        self.short = [c for c in dev if c.duration <= SHORT_MAX_S]
        self.longer = [c for c in dev if c.duration > SHORT_MAX_S]
        self.long = long_clips()
        self.realtime_audio = [encode(c.path, REALTIME_RATE) for c in dev if 3 <= c.duration <= SHORT_MAX_S][:8]
        self.garbage = random.Random(args.seed).randbytes(20_000)
        self.outcomes: list[Outcome] = []
        self.faults: list[Fault] = []
        self.pids: dict[int, float] = {}  # family server pid -> first seen (s)
        self.ps_failures: list[str] = []
        self.lock = threading.Lock()
        self.long_running = 0
        self.stopped: set[int] = set()  # groups SIGSTOPped and not yet seen gone
        self.done = threading.Event()
        self.t0 = time.monotonic()  # reset by run()
        self.deadline = self.t0 + args.minutes * 60
        self.baseline_peak = 0
        self.memory: TreeMemory | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- clients --------------------------------------------------------------------------------------------

    def client(self, index: int) -> None:
        rng = random.Random(f"{self.args.seed}-client-{index}")
        kinds, weights = zip(*WEIGHTS.items(), strict=True)
        with httpx.Client(timeout=self.args.timeout) as http:
            for n in itertools.count():
                if time.monotonic() >= self.deadline:
                    return
                kind = rng.choices(kinds, weights)[0]
                if kind == "long" and not self.take_long():
                    kind = "short"
                request_id = f"soak-{self.args.seed}-{index}-{n}"
                start = self.now()
                try:
                    result, status, detail = self.one(kind, rng, http, request_id)
                except Exception as error:  # a bug of this script, not of the server: shown, not hidden
                    result, status, detail = "unexpected", None, f"client error {error!r}"
                finally:
                    if kind == "long":
                        with self.lock:
                            self.long_running -= 1
                with self.lock:
                    self.outcomes.append(Outcome(kind, request_id, start, self.now(), result, status, detail))

    def take_long(self) -> bool:
        """One long request at a time, none in the run's last seconds."""
        with self.lock:
            if self.long_running or time.monotonic() > self.deadline - LONG_NOT_IN_LAST_S:
                return False
            self.long_running += 1
            return True

    def one(self, kind: str, rng: random.Random, http: httpx.Client, rid: str) -> tuple[str, int | None, str]:
        if kind == "realtime":
            return asyncio.run(self.realtime(rng.choice(self.realtime_audio), rid))
        if kind == "bad":
            return self.bad(rng.choice(BAD_INPUTS), rng, http, rid)
        if kind == "long":
            clip = rng.choice(self.long)
            fields = {"response_format": "verbose_json", "timestamp_granularities[]": ["segment"]}
            return self.post(http, rid, clip.path.read_bytes(), fields, timeout=self.args.long_timeout)
        if kind == "short":
            return self.post(http, rid, rng.choice(self.short).path.read_bytes(), {"response_format": "json"})
        if kind == "drop_abort":
            timeout = httpx.Timeout(self.args.timeout, read=ABORT_AFTER_S)
            return self.post(http, rid, rng.choice(self.short).path.read_bytes(), {}, timeout=timeout, abort=True)
        clips = self.short if kind == "sse" else self.longer
        return self.sse(http, rid, rng.choice(clips), drop=kind == "drop_sse")

    def post(
        self,
        http: httpx.Client,
        rid: str,
        audio: bytes,
        fields: dict[str, Any],
        *,
        model: str = MODEL,
        timeout: float | httpx.Timeout | None = None,
        abort: bool = False,
        bad: bool = False,
    ) -> tuple[str, int | None, str]:
        """A transcription request, its answer classified."""
        files = {"file": ("clip.flac", audio, "audio/flac")}
        try:
            with http.stream(
                "POST",
                self.router.url + "/v1/audio/transcriptions",
                files=files,
                data={"model": model, **fields},
                headers={"x-request-id": rid},
                timeout=timeout if timeout is not None else self.args.timeout,
            ) as response:
                try:
                    body = response.read()
                except httpx.TimeoutException:
                    if abort:
                        return "disconnected", response.status_code, "left after the status line"
                    return "lost", response.status_code, "no body within the timeout after the status"
                except httpx.TransportError as error:
                    return "unexpected", response.status_code, f"body cut: {type(error).__name__}: {error}"
        except httpx.ReadTimeout:
            if abort:
                return "disconnected", None, ""
            return "lost", None, "no answer within the timeout"
        except httpx.TimeoutException as error:
            return "lost", None, f"{type(error).__name__}: {error}"
        except httpx.TransportError as error:
            return "lost", None, f"no status: {type(error).__name__}: {error}"
        return self.classify(response.status_code, body, bad)

    @staticmethod
    def classify(status: int, body: bytes, bad: bool) -> tuple[str, int, str]:
        error = openai_error(body)
        if 200 <= status < 300:
            if bad:
                return "unexpected", status, f"bad input answered {status}: {excerpt(body)}"
            try:
                answer = json.loads(body)
            except ValueError:
                return "unexpected", status, f"not JSON: {excerpt(body)}"
            if not str(answer.get("text", "")).strip():
                return "unexpected", status, f"no text: {excerpt(body)}"
            return "ok", status, ""
        if error is None:
            return "unexpected", status, f"no OpenAI error body: {excerpt(body)}"
        if 400 <= status < 500:
            return ("4xx" if bad else "unexpected"), status, str(error.get("code") or error.get("type"))
        if status >= 500:
            return "5xx", status, str(error.get("code") or error.get("type"))
        return "unexpected", status, excerpt(body)

    def bad(self, which: str, rng: random.Random, http: httpx.Client, rid: str) -> tuple[str, int | None, str]:
        audio = rng.choice(self.short).path.read_bytes()
        if which == "non-audio bytes":
            return self.post(http, rid, self.garbage, {}, bad=True)
        if which == "unknown model":
            return self.post(http, rid, audio, {}, model="no-such-model", bad=True)
        return self.post(http, rid, audio, {"response_format": "xml"}, bad=True)

    def sse(self, http: httpx.Client, rid: str, clip: Clip, *, drop: bool) -> tuple[str, int | None, str]:
        """stream=true: read to `transcript.text.done` or an error event, or close after the first event."""
        files = {"file": ("clip.flac", clip.path.read_bytes(), "audio/flac")}
        try:
            with http.stream(
                "POST",
                self.router.url + "/v1/audio/transcriptions",
                files=files,
                data={"model": MODEL, "stream": "true"},
                headers={"x-request-id": rid},
            ) as response:
                status = response.status_code
                if status != 200 or not response.headers.get("content-type", "").startswith("text/event-stream"):
                    try:
                        body = response.read()
                    except httpx.TransportError as error:
                        return "unexpected", status, f"body cut: {type(error).__name__}: {error}"
                    return self.classify(status, body, bad=False)
                try:
                    for line in response.iter_lines():
                        if not line.startswith("data: {"):
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            return "5xx", status, f"SSE error event {event['error'].get('code')}"
                        if drop:
                            return "disconnected", status, ""  # leaving the block closes the connection
                        if event.get("type") == "transcript.text.done":
                            return "ok", status, ""
                except httpx.TimeoutException:
                    return "lost", status, "no event within the timeout"
                except httpx.TransportError as error:
                    return "unexpected", status, f"stream cut: {type(error).__name__}: {error}"
                return "unexpected", status, "stream ended without transcript.text.done or an error event"
        except httpx.TimeoutException as error:
            return "lost", None, f"{type(error).__name__}: {error}"
        except httpx.TransportError as error:
            return "lost", None, f"no status: {type(error).__name__}: {error}"

    async def realtime(self, pcm: bytes, rid: str) -> tuple[str, int | None, str]:
        try:
            return await asyncio.wait_for(self._realtime(pcm, rid), self.args.timeout)
        except TimeoutError:
            return "lost", None, f"items still pending after {self.args.timeout:g} s"
        except websockets.InvalidStatus as error:
            status = error.response.status_code
            return self.classify(status, error.response.body or b"", bad=False)
        except websockets.ConnectionClosed as error:
            return "unexpected", None, f"closed before the items ended: {error}"
        except OSError as error:
            return "lost", None, f"no connection: {error!r}"

    async def _realtime(self, pcm: bytes, rid: str) -> tuple[str, int | None, str]:
        session = {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": REALTIME_RATE},
                        "transcription": {"model": MODEL},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    }
                },
            },
        }
        events: list[dict[str, Any]] = []
        headers = {"x-request-id": rid}
        async with websockets.connect(self.ws_url, additional_headers=headers, max_size=None) as ws:
            created = json.loads(await ws.recv())
            if created.get("type") != "session.created":
                return "unexpected", 101, f"first event {excerpt(json.dumps(created))}"
            await ws.send(json.dumps(session))
            step = REALTIME_RATE * 2 * REALTIME_CHUNK_MS // 1000
            audio = silence(0.3, REALTIME_RATE) + pcm + silence(1.5, REALTIME_RATE)

            async def send() -> None:
                start = time.monotonic()
                for offset in range(0, len(audio), step):
                    await ws.send(append_event(audio[offset : offset + step]))
                    sent = (offset + step) / (2 * REALTIME_RATE)
                    await asyncio.sleep(max(0.0, start + sent / REALTIME_SPEED - time.monotonic()))

            sender = asyncio.create_task(send())
            try:
                while True:
                    committed = {e["item_id"] for e in events if e["type"] == "input_audio_buffer.committed"}
                    ended = {e["item_id"] for e in events if e["type"].endswith((".completed", ".failed"))}
                    if sender.done() and ended and committed <= ended:
                        break
                    if sender.done() and sender.exception():
                        raise sender.exception()  # type: ignore[misc]
                    try:
                        events.append(json.loads(await asyncio.wait_for(ws.recv(), 0.2)))
                    except TimeoutError:
                        continue
            finally:
                sender.cancel()
        errors = [e for e in events if e["type"] == "error"]
        failed = [e for e in events if e["type"] == f"{TRANSCRIPTION}.failed"]
        if errors:
            return "unexpected", 101, f"error event {excerpt(json.dumps(errors[0]))}"
        if failed:
            return "5xx", 101, f".failed {failed[0].get('error', {}).get('code')}"
        return "ok", 101, ""

    # --- faults ---------------------------------------------------------------------------------------------

    def family(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The family server as /api/ps lists it (None when none is loaded, or /api/ps failed)."""
        try:
            models = httpx.get(self.router.url + "/api/ps", timeout=timeout).json()["models"]
        except (httpx.HTTPError, ValueError, KeyError) as error:
            with self.lock:
                self.ps_failures.append(f"{self.now():.1f} s: {type(error).__name__}: {error}")
            return None
        model = next((m for m in models if m["id"] == MODEL), None)
        if model is not None:
            with self.lock:
                self.pids.setdefault(model["pid"], self.now())
        return model

    def watch_ps(self) -> None:
        """Every family server pid seen over the run (each new one is a restart)."""
        while not self.done.wait(1.0):
            self.family()

    def injector(self) -> None:
        rng = random.Random(f"{self.args.seed}-faults")
        low, high = self.args.fault_interval
        next_at = self.args.baseline_seconds + rng.uniform(0, 5)
        while not self.done.wait(max(0.0, next_at - self.now())):
            if time.monotonic() >= self.deadline:  # none while the last requests drain
                return
            if self.memory is not None and not self.faults:
                self.baseline_peak = self.memory.peak
            model = self.ready_family(deadline=self.now() + 30)
            if time.monotonic() >= self.deadline:
                return
            if model is None:
                print(f"  {self.now():6.1f} s: no family server ready for 30 s: fault skipped", flush=True)
                next_at = self.now() + low
                continue
            kind = rng.choice(self.args.faults)
            self.fault(kind, model["pid"])
            next_at = self.faults[-1].at + rng.uniform(low, high)

    def ready_family(self, deadline: float) -> dict[str, Any] | None:
        while self.now() < deadline and not self.done.is_set():
            model = self.family()
            if model is not None and model.get("status") == "ready":
                return model
            time.sleep(0.5)
        return None

    def fault(self, kind: str, pid: int) -> None:
        try:
            group = Group.of(pid)
        except psutil.Error:
            return
        fault = Fault(kind, self.now(), pid)
        with self.lock:
            self.faults.append(fault)
        try:
            if kind == "kill":
                os.killpg(pid, signal.SIGKILL)
            else:
                self.stopped.add(pid)
                os.killpg(pid, signal.SIGSTOP)
        except ProcessLookupError:
            return
        while group.alive() and self.now() - fault.at < WATCHDOG_LIMIT_S:
            time.sleep(0.1)
        left = group.alive()
        if left:
            fault.watchdog_miss = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)
        else:
            fault.gone_after = self.now() - fault.at
        self.stopped.discard(pid)
        miss = f"WATCHDOG MISS: {len(left)} processes still there, SIGCONT sent" if left else ""
        print(
            f"  {fault.at:6.1f} s: {'SIGKILL' if kind == 'kill' else 'SIGSTOP'} to pid {pid}'s group; "
            f"gone after {seconds(fault.gone_after)} s {miss}",
            flush=True,
        )
        while self.now() - fault.at < READY_LIMIT_S and not self.done.is_set():
            model = self.family()
            if model is not None and model["pid"] != pid and model.get("status") == "ready":
                fault.ready_after = self.now() - fault.at
                break
            time.sleep(0.25)

    def release_stopped(self) -> None:
        """Never leave a stopped process behind, whatever happened."""
        for pid in list(self.stopped):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)

    def progress(self) -> None:
        while not self.done.wait(30.0):
            with self.lock:
                counts = Counter(o.result for o in self.outcomes)
            print(
                f"  {self.now():6.1f} s: {sum(counts.values())} answered: "
                + ", ".join(f"{r} {counts[r]}" for r in RESULTS if counts[r]),
                flush=True,
            )

    # --- the run --------------------------------------------------------------------------------------------

    def run(self) -> None:
        root = psutil.Process(self.router.process.pid)
        self.idle_rss = sum(tree_rss(root).values())
        self.t0 = time.monotonic()
        self.deadline = self.t0 + self.args.minutes * 60
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(self.args.clients)]
        helpers = [threading.Thread(target=t, daemon=True) for t in (self.injector, self.watch_ps, self.progress)]
        with TreeMemory(root, interval=0.5) as memory:
            self.memory = memory
            try:
                for thread in threads + helpers:
                    thread.start()
                for thread in threads:
                    thread.join()
                self.done.set()
                for thread in helpers:
                    thread.join()
            finally:
                self.done.set()
                self.release_stopped()
        self.peak = memory.peak
        self.after = self.final_check()
        self.end_rss = sum(tree_rss(root).values())

    def final_check(self) -> str:
        """After the run, one short request must be answered right."""
        clip = self.short[0]
        start = time.perf_counter()
        try:
            response = httpx.post(
                self.router.url + "/v1/audio/transcriptions",
                files={"file": ("clip.flac", clip.path.read_bytes(), "audio/flac")},
                data={"model": MODEL},
                timeout=self.args.timeout,
            )
        except httpx.HTTPError as error:
            return f"FAILED: {error!r}"
        verdict = "ok" if response.status_code == 200 else "FAILED"
        return f"{verdict}, {response.status_code} in {time.perf_counter() - start:.2f} s: {excerpt(response.text, 80)}"

    # --- the report -----------------------------------------------------------------------------------------

    def report(self) -> None:
        outcomes = self.outcomes
        first_fault = self.faults[0].at if self.faults else float("inf")
        print("\n### Requests\n")
        print(
            "| kind | sent | 2xx / completed | clean 4xx | 5xx with an error body / SSE error / .failed | "
            "disconnected by the client | unexpected | lost |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for kind in [*WEIGHTS, None]:
            mine = [o for o in outcomes if kind is None or o.kind == kind]
            counts = Counter(o.result for o in mine)
            label = "**all**" if kind is None else LABELS[kind]
            print(f"| {label} | {len(mine)} | " + " | ".join(str(counts[r]) for r in RESULTS) + " |")
        before = [o for o in outcomes if o.end < first_fault and o.result in ("5xx", "unexpected", "lost")]
        print(f"\nerror answers before the first fault (baseline phase): {len(before)} (expected 0)")

        lost = [o for o in outcomes if o.result == "lost"]
        if lost:
            print(f"\n**LOST: {len(lost)} requests got no answer** (no status within the timeout, or a reset):\n")
            for o in lost:
                print(f"- LOST {o.request_id} {LABELS[o.kind]}, sent at {o.start:.1f} s: {o.detail}")
        else:
            print("lost: 0")
        unexpected = [o for o in outcomes if o.result == "unexpected"]
        if unexpected:
            print(f"\nunexpected answers: {len(unexpected)}\n")
            for o in unexpected:
                print(f"- {o.request_id} {LABELS[o.kind]}, {o.start:.1f}-{o.end:.1f} s, status {o.status}: {o.detail}")

        codes = Counter((o.kind, o.status, o.detail) for o in outcomes if o.result in ("4xx", "5xx"))
        if codes:
            print("\n### Errors answered\n")
            print("| kind | status | code | count |")
            print("|---|---|---|---|")
            for (kind, status, code), n in sorted(codes.items(), key=lambda item: (item[0][0], str(item[0][1]))):
                print(f"| {LABELS[kind]} | {status} | {code} | {n} |")

        print(f"\n### Latency of successful short requests (json, dev clips <= {SHORT_MAX_S:g} s)\n")
        print("| phase | requests | p50 (s) | p95 (s) |")
        print("|---|---|---|---|")
        short = [o for o in outcomes if o.kind == "short" and o.result == "ok"]
        phases = (
            (f"fault-free, first {min(first_fault, self.args.baseline_seconds):.0f} s (baseline)", 0, first_fault),
            ("with faults, after the first", first_fault, float("inf")),
        )
        for name, low, high in phases:
            latencies = [o.latency for o in short if o.start >= low and o.end < high]
            if latencies:
                p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
                print(f"| {name} | {len(latencies)} | {p50:.2f} | {p95:.2f} |")
            else:
                print(f"| {name} | 0 | - | - |")

        print(f"\n### Faults (router --hang-seconds {self.args.hang_seconds:g})\n")
        print("| # | at (s) | fault | pid | server gone after (s) | new server ready after (s) | watchdog |")
        print("|---|---|---|---|---|---|---|")
        for i, f in enumerate(self.faults, 1):
            name = "SIGKILL to the group" if f.kind == "kill" else "SIGSTOP to the group"
            watchdog = "MISS" if f.watchdog_miss else ("ok" if f.kind == "stop" else "")
            print(
                f"| {i} | {f.at:.1f} | {name} | {f.pid} | {seconds(f.gone_after)} | {seconds(f.ready_after)} | "
                f"{watchdog} |"
            )
        kinds = Counter(f.kind for f in self.faults)
        misses = sum(f.watchdog_miss for f in self.faults)
        print(
            f"\nfaults: {len(self.faults)} (kill -9 {kinds['kill']}, SIGSTOP {kinds['stop']}); family server pids "
            f"seen: {len(self.pids)}, restarts seen: {max(0, len(self.pids) - 1)}; watchdog misses: {misses}"
            + (" **WATCHDOG MISS**" if misses else "")
        )
        if self.ps_failures:
            print(f"/api/ps failed {len(self.ps_failures)} times: {'; '.join(self.ps_failures[:5])}")

        print("\n### Router process tree RSS (router + all descendants, summed, sampled every 0.5 s)\n")
        print("| when | MB |")
        print("|---|---|")
        print(f"| after warm-up (baseline) | {self.idle_rss / MB:.0f} |")
        if self.baseline_peak:
            print(f"| peak, fault-free phase | {self.baseline_peak / MB:.0f} |")
        print(f"| peak, whole run | {self.peak / MB:.0f} |")
        print(f"| at the end, after the last request | {self.end_rss / MB:.0f} |")

        print(f"\nafter the run, a short request: {self.after}")
        log = self.router.log_path.read_text(errors="replace")
        print(f"router log: {self.router.log_path} ({log.count('Traceback')} tracebacks)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10, help="length of the run, the fault-free phase included")
    parser.add_argument("--seed", type=int, default=1, help="seeds the traffic mix and the faults")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--baseline-seconds", type=float, default=30, help="fault-free first phase (the baseline)")
    parser.add_argument(
        "--fault-interval", type=float, nargs=2, default=[20, 40], metavar=("MIN", "MAX"), help="seconds between faults"
    )
    parser.add_argument("--faults", nargs="+", choices=("kill", "stop"), default=["kill", "stop"])
    parser.add_argument("--hang-seconds", type=float, default=5, help="the router's --hang-seconds")
    parser.add_argument("--timeout", type=float, default=120, help="seconds without an answer before 'lost'")
    parser.add_argument("--long-timeout", type=float, default=300, help="the same for long/ clips")
    args = parser.parse_args()
    args.baseline_seconds = min(args.baseline_seconds, args.minutes * 60 / 2)
    return args


def main() -> None:
    args = parse_args()
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"run {now}, os.cpu_count()={os.cpu_count()}, {MODEL} (bundled, CPU int8) behind servers/router.py")
    print(
        f"{args.minutes:g} min, {args.clients} clients, first {args.baseline_seconds:g} s fault-free, then a fault "
        f"every {args.fault_interval[0]:g}-{args.fault_interval[1]:g} s ({', '.join(args.faults)}); seed {args.seed}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        registry = write_registry(Path(folder), TINY_EN)
        router_args = ("--registry", str(registry), "--hang-seconds", f"{args.hang_seconds:g}")
        with ServerProcess("servers/router.py", *router_args, name="bench-soak") as router:
            soak = Soak(args, router)
            print(f"warm-up: {soak.final_check()}", flush=True)
            soak.run()
            soak.report()


if __name__ == "__main__":
    main()
