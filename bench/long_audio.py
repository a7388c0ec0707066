"""Long recordings on tiny.en: bounded memory, windows decoded in parallel, work cancelled when the client leaves.

    .venv/bin/python -m bench.long_audio [--parts memory latency segments auto cancel] [--skip-memory]
                                         [--repeats 3] [--memory-seconds 7100] [--timeout 1800]

Starts `servers/router.py` on a registry of the bundled tiny.en alone and talks to it over HTTP. Every
part prints a markdown table with its baseline, measured in the same run, beside it:

1. memory: the summed RSS of the router and all its descendants, sampled every 50 ms, while it
   transcribes ~2 h of 8 kHz digital silence and ~2 h of speech (corpus clips in a loop with 0.5 s
   gaps), both built once into .cache/bench/. Baseline: the tree's idle RSS just before; target: a
   peak of at most 1.5 GB. The speech file is over the 100 MB default upload limit, so the router (and
   through it the family server) gets OPEN_SPEECH_MAX_UPLOAD_MB (--max-upload-mb).
2. latency: the two long/ clips at one client, verbose_json with word and segment timestamps, against
   sequential in-process faster-whisper (same model, beam 5, temperature fallback, word timestamps;
   cpu_threads 1 and 2, the faster one is the baseline), alternating, median of --repeats; WER of both.
3. segments: how close the server's segment boundaries and word times land to the manifest's exact
   sentence boundaries, beside in-process transcribe()'s (from the runs of part 2).
4. cancel: a stream=true request on the longer long/ clip, dropped after its first delta; the family
   server's CPU time from then until it is idle. Baseline: the CPU time in-process faster-whisper
   (cpu_threads=1) takes for the clip's first 30 s window. Then a normal request must still be right.
5. auto: chunking_strategy=auto on one long clip, beside the same request without it.

The machine is noisy: compare each figure with its baseline, not with another run's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import psutil

from servers.faster_whisper import FALLBACK_TEMPERATURES, model_path
from tests.helpers import CACHE, CORPUS, TINY_EN, ServerProcess, corpus, wer, write_registry

PARTS = ("memory", "latency", "segments", "auto", "cancel")
MODEL = TINY_EN["id"]
SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30  # Whisper's window: the unit of work a cancelled request may still finish
MB = 1_000_000
MEMORY_TARGET_MB = 1500
LATENCY_RATIO_TARGET = 0.6
WER_MARGIN = 0.005  # server WER at most in-process WER + 0.5 points
NEAR_S = 0.5  # a timestamp this close to the reference counts as right
IDLE_CPU_S = 0.020  # the family server is idle once its CPU time grows by less than this ...
IDLE_OVER_S = 1.0  # ... over this long


# --- inputs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LongClip:
    """A long/ clip with its reference text and the exact start and end of each of its sentences."""

    id: str
    path: Path
    duration: float
    text: str
    sentences: list[tuple[float, float]]


def long_clips() -> list[LongClip]:
    root = CORPUS / "long"
    clips = []
    for line in (root / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        segments = entry["segments"]
        clips.append(
            LongClip(
                Path(entry["audio"]).stem,
                root / entry["audio"],
                entry["duration"],
                " ".join(s["text"] for s in segments),
                [(s["start"], s["end"]) for s in segments],
            )
        )
    return clips


def write_flac(path: Path, rate: int, blocks: Iterable[np.ndarray]) -> Path:
    """Encode int16 mono `blocks` one at a time (the file is never whole in memory); renamed into place
    only when complete, so an interrupted build is not reused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with av.open(str(partial), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        stream.format = "s16"
        pts = 0
        for block in blocks:
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, pts
            pts += len(block)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    partial.rename(path)
    return path


def silence_blocks(seconds: float, rate: int, block_seconds: int = 10) -> Iterator[np.ndarray]:
    remaining = round(seconds * rate)
    zeros = np.zeros(block_seconds * rate, np.int16)
    while remaining > 0:
        yield zeros[:remaining]
        remaining -= min(remaining, len(zeros))


def read_pcm16(path: Path) -> np.ndarray:
    """A clip as 16 kHz mono int16 samples."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    with av.open(str(path)) as container:
        frames = [f for frame in container.decode(audio=0) for f in resampler.resample(frame)]
    frames += resampler.resample(None)
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames])


def speech_blocks(paths: list[Path], seconds: float, gap_seconds: float = 0.5) -> Iterator[np.ndarray]:
    """The clips one after another, each followed by a silent gap, from the first again until `seconds`."""
    pcm = [read_pcm16(p) for p in paths]  # ~20 min of corpus: ~40 MB, the 2 h output is never held
    gap = np.zeros(round(gap_seconds * SAMPLE_RATE), np.int16)
    remaining = round(seconds * SAMPLE_RATE)
    while remaining > 0:
        for block in (b for samples in pcm for b in (samples, gap)):
            yield block[:remaining]
            remaining -= min(remaining, len(block))
            if remaining == 0:
                return


def memory_inputs(seconds: float) -> list[tuple[str, Path]]:
    """The two ~2 h files of part 1, built into .cache/bench/ unless already there."""
    folder = CACHE / "bench"
    silence = folder / f"silence-8k-{seconds:g}s.flac"
    speech = folder / f"speech-16k-{seconds:g}s.flac"
    if not silence.exists():
        print(f"building {silence} ...", flush=True)
        write_flac(silence, 8000, silence_blocks(seconds, 8000))
    if not speech.exists():
        print(f"building {speech} ...", flush=True)
        paths = [c.path for name in ("dev", "untranscribed") for c in corpus(name)]
        write_flac(speech, SAMPLE_RATE, speech_blocks(paths, seconds))
    return [("8 kHz digital silence", silence), ("speech, corpus in a loop", speech)]


# --- the server's process tree ------------------------------------------------------------------------------


def role(process: psutil.Process, router_pid: int) -> str:
    """What a process of the tree is, from its command line: LitServe's manager and API processes are
    forks of the family server's main process (same command line); the manager is the one holding a
    multiprocessing listener socket."""
    try:
        command = " ".join(process.cmdline())
        if process.pid == router_pid:
            return "router"
        if "spawn_main" in command:
            return "worker"
        if "resource_tracker" in command:
            return "resource tracker"
        if "-m servers." in command:
            if process.ppid() == router_pid:
                return "family main"
            unix = process.net_connections("unix")
            return "manager" if any("pymp-" in str(c.laddr) for c in unix) else "API process"
        return Path(process.cmdline()[0]).name
    except (psutil.Error, IndexError):
        return "?"


def descendants(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def tree_rss(root: psutil.Process) -> dict[psutil.Process, int]:
    """RSS of each process of the tree, bytes (processes that exit meanwhile are left out)."""
    rss = {}
    for process in descendants(root):
        with contextlib.suppress(psutil.Error):
            rss[process] = process.memory_info().rss
    return rss


class TreeMemory:
    """Peak summed RSS of a process tree, and each process's own peak, sampled on a background thread.

    A sum of RSS counts pages that forked processes share once per process: it errs high."""

    def __init__(self, root: psutil.Process, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak = 0
        self.peaks: dict[int, int] = {}
        self.roles: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._record()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._record()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._record()

    def _record(self) -> None:
        rss = tree_rss(self.root)
        self.peak = max(self.peak, sum(rss.values()))
        for process, value in rss.items():
            self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), value)
            if process.pid not in self.roles:
                self.roles[process.pid] = role(process, self.root.pid)

    def per_process(self) -> str:
        """`role peak` for each process, largest first; a role held by several processes names their pids."""
        names = list(self.roles.values())
        labels = {pid: name if names.count(name) == 1 else f"{name} {pid}" for pid, name in self.roles.items()}
        ordered = sorted(self.peaks.items(), key=lambda item: -item[1])
        return ", ".join(f"{labels.get(pid, pid)} {value / MB:.0f}" for pid, value in ordered)


def idle_rss(root: psutil.Process, settle: float = 2.0, samples: int = 5) -> int:
    """The tree's RSS at rest: the median of a few samples once the previous request has settled."""
    time.sleep(settle)
    values = []
    for _ in range(samples):
        values.append(sum(tree_rss(root).values()))
        time.sleep(0.1)
    return int(statistics.median(values))


def family_processes(router_pid: int) -> list[psutil.Process]:
    """The family servers the router started, with all their processes."""
    family = [p for p in psutil.Process(router_pid).children() if "-m servers." in " ".join(p.cmdline())]
    return [p for root in family for p in descendants(root)]


class TreeCpu:
    """CPU time (user + system, reaped children included) of the family servers' process trees; a process
    that exits keeps counting with what it had used when last seen."""

    def __init__(self, router_pid: int) -> None:
        self.router_pid = router_pid
        self.seen: dict[tuple[int, float], float] = {}

    def total(self) -> float:
        for process in family_processes(self.router_pid):
            try:
                with process.oneshot():
                    t = process.cpu_times()
                    self.seen[process.pid, process.create_time()] = (
                        t.user + t.system + t.children_user + t.children_system
                    )
            except psutil.Error:
                pass
        return sum(self.seen.values())


# --- transcribing -------------------------------------------------------------------------------------------


@dataclass
class Transcript:
    latency: float
    text: str
    segments: list[tuple[float, float]] = field(default_factory=list)
    words: list[tuple[float, float]] = field(default_factory=list)


def post(http: httpx.Client, url: str, path: Path, fields: dict[str, Any]) -> httpx.Response:
    """POST `path` to the transcription route as multipart, read from the file as it is sent."""
    with path.open("rb") as f:
        return http.post(
            url + "/v1/audio/transcriptions",
            files={"file": (path.name, f, "audio/flac")},
            data={"model": MODEL, **fields},
        )


def server_transcribe(http: httpx.Client, url: str, path: Path, **fields: Any) -> Transcript:
    start = time.perf_counter()
    response = post(http, url, path, fields)
    latency = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"{path.name}: {response.status_code} {response.text[:500]}")
    body = response.json()
    return Transcript(
        latency,
        body["text"],
        [(s["start"], s["end"]) for s in body.get("segments") or []],
        [(w["start"], w["end"]) for w in body.get("words") or []],
    )


VERBOSE = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}


class InProcess:
    """faster-whisper in this process, one model per cpu_threads, loaded on first use."""

    def __init__(self) -> None:
        self.models: dict[int, Any] = {}

    def model(self, threads: int) -> Any:
        if threads not in self.models:
            from faster_whisper import WhisperModel

            self.models[threads] = WhisperModel(
                model_path("bundled"), device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1
            )
            self.transcribe(threads, corpus("dev")[0].path)  # warm-up
        return self.models[threads]

    def transcribe(self, threads: int, audio: Path | np.ndarray, word_timestamps: bool = True) -> Transcript:
        """Sequential `transcribe()` as the server's settings have it, decoding included, every segment read."""
        import faster_whisper

        model = self.model(threads)
        start = time.perf_counter()
        samples = faster_whisper.decode_audio(str(audio)) if isinstance(audio, Path) else audio
        segments, _ = model.transcribe(
            samples, beam_size=5, temperature=FALLBACK_TEMPERATURES, word_timestamps=word_timestamps
        )
        segments = list(segments)
        return Transcript(
            time.perf_counter() - start,
            "".join(s.text for s in segments).strip(),
            [(s.start, s.end) for s in segments],
            [(w.start, w.end) for s in segments for w in s.words or []],
        )


# --- statistics ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def nearest(points: list[float], targets: list[float]) -> list[float]:
    """For each target, the distance to the nearest of `points` (infinite when there are none)."""
    return [min((abs(p - t) for p in points), default=float("inf")) for t in targets]


def share(distances: list[float], within: float = NEAR_S) -> float:
    return sum(d <= within for d in distances) / len(distances) if distances else 0.0


def seconds(value: float) -> str:
    return "n/a" if value == float("inf") else f"{value:.2f}"


# --- the parts ----------------------------------------------------------------------------------------------


@dataclass
class Runs:
    """Part 2's transcripts of each clip: the server's, and in-process per cpu_threads, in run order."""

    server: dict[str, list[Transcript]] = field(default_factory=dict)
    inprocess: dict[int, dict[str, list[Transcript]]] = field(default_factory=dict)

    def best_threads(self) -> int:
        """The in-process configuration with the lowest total latency: the baseline."""
        return min(self.inprocess, key=lambda t: sum(x.latency for runs in self.inprocess[t].values() for x in runs))


class Bench:
    def __init__(self, args: argparse.Namespace, router: ServerProcess, http: httpx.Client) -> None:
        self.args = args
        self.router = router
        self.url = router.url
        self.http = http
        self.clips = [c for c in long_clips() if not args.clips or c.id in args.clips]
        self.inprocess = InProcess()
        self._runs: Runs | None = None

    def memory(self) -> None:
        """Part 1: peak RSS of the router's whole tree while it transcribes ~2 h files."""
        root = psutil.Process(self.router.process.pid)
        rows = []
        for name, path in memory_inputs(self.args.memory_seconds):
            idle = idle_rss(root)
            print(f"  memory: {name} ({path.stat().st_size / MB:.1f} MB file) ...", flush=True)
            with TreeMemory(root) as memory:
                start = time.perf_counter()
                try:
                    response = post(self.http, self.url, path, {"response_format": "json"})
                    status = str(response.status_code)
                    if response.status_code != 200:
                        status += f" ({response.text[:120]})"
                except httpx.HTTPError as error:
                    status = type(error).__name__
                wall = time.perf_counter() - start
            rows.append(
                f"| {name} | {self.args.memory_seconds:g} | {status} | {wall:.1f} | {idle / MB:.0f} | "
                f"{memory.peak / MB:.0f} | {(memory.peak - idle) / MB:.0f} | <= {MEMORY_TARGET_MB} | "
                f"{memory.per_process()} |"
            )
        print("\n### 1. Peak memory of the server tree (router and all descendants, summed RSS, 50 ms samples)\n")
        print(
            "| input | audio (s) | status | wall (s) | idle RSS before (MB, baseline) | peak RSS (MB) | "
            "peak - idle (MB) | target peak (MB) | per-process peak (MB) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows), flush=True)

    def runs(self) -> Runs:
        """Part 2's measurements (part 3 reads them too): server and in-process alternating, per clip."""
        if self._runs is None:
            repeats = self.args.repeats if "latency" in self.args.parts else 1
            runs = Runs()
            for i in range(repeats):
                for clip in self.clips:
                    print(f"  latency: {clip.id} round {i + 1}/{repeats}", flush=True)
                    runs.server.setdefault(clip.id, []).append(
                        server_transcribe(self.http, self.url, clip.path, **VERBOSE)
                    )
                    for threads in self.args.threads:
                        runs.inprocess.setdefault(threads, {}).setdefault(clip.id, []).append(
                            self.inprocess.transcribe(threads, clip.path)
                        )
            self._runs = runs
        return self._runs

    def latency(self) -> None:
        """Part 2: latency and WER of the long clips at one client, server beside in-process."""
        runs = self.runs()
        best = runs.best_threads()
        totals = ", ".join(
            f"cpu_threads={t}: {sum(x.latency for r in by_clip.values() for x in r):.1f} s"
            for t, by_clip in runs.inprocess.items()
        )
        print(f"\n### 2. Latency at 1 client, median of {len(next(iter(runs.server.values())))} runs\n")
        print(f"in-process totals: {totals}; baseline: cpu_threads={best}\n")
        print(
            "| clip | audio (s) | server (s) | in-process (s, baseline) | ratio server / in-process | target ratio | "
            "WER server | WER in-process | target WER server |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for clip in self.clips:
            server, local = runs.server[clip.id], runs.inprocess[best][clip.id]
            s, p = statistics.median(x.latency for x in server), statistics.median(x.latency for x in local)
            s_wer, p_wer = wer([clip.text], [server[0].text]), wer([clip.text], [local[0].text])
            print(
                f"| {clip.id} | {clip.duration:.1f} | {s:.2f} | {p:.2f} | {s / p:.2f} | <= {LATENCY_RATIO_TARGET} | "
                f"{s_wer:.2%} | {p_wer:.2%} | <= {p_wer + WER_MARGIN:.2%} |",
                flush=True,
            )

    def segments(self) -> None:
        """Part 3: distances from the manifest's sentence boundaries to the nearest segment boundary and word."""
        runs = self.runs()
        best = runs.best_threads()
        print(f"\n### 3. Segment and word times against the manifest's sentence boundaries (within {NEAR_S} s)\n")
        print(
            "| clip | side | boundaries | nearest segment boundary within | median (s) | p95 (s) | "
            "sentence start: nearest word start within | sentence end: nearest word end within |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for clip in self.clips:
            starts, ends = [s for s, _ in clip.sentences], [e for _, e in clip.sentences]
            sides = (("server", runs.server[clip.id][0]), ("in-process (baseline)", runs.inprocess[best][clip.id][0]))
            for side, transcript in sides:
                boundaries = [t for segment in transcript.segments for t in segment]
                distances = nearest(boundaries, starts + ends)
                word_starts = nearest([s for s, _ in transcript.words], starts)
                word_ends = nearest([e for _, e in transcript.words], ends)
                print(
                    f"| {clip.id} | {side} | {len(distances)} | {share(distances):.0%} | "
                    f"{seconds(statistics.median(distances))} | {seconds(percentile(distances, 0.95))} | "
                    f"{share(word_starts):.0%} | {share(word_ends):.0%} |",
                    flush=True,
                )

    def auto(self) -> None:
        """Part 5: chunking_strategy=auto beside the same request without it, alternating."""
        clip = self.clips[0]
        latencies: dict[str, list[float]] = {"auto": [], "default": []}
        texts: dict[str, str] = {}
        for i in range(self.args.repeats):
            print(f"  auto: {clip.id} round {i + 1}/{self.args.repeats}", flush=True)
            for name, fields in (("auto", {"chunking_strategy": "auto"}), ("default", {})):
                transcript = server_transcribe(self.http, self.url, clip.path, response_format="json", **fields)
                latencies[name].append(transcript.latency)
                texts.setdefault(name, transcript.text)
        print(f"\n### 5. chunking_strategy=auto on {clip.id} ({clip.duration:.1f} s), median of {self.args.repeats}\n")
        print("| request | latency (s) | WER |")
        print("|---|---|---|")
        for name, label in (("auto", "chunking_strategy=auto"), ("default", "no chunking_strategy (baseline)")):
            print(f"| {label} | {statistics.median(latencies[name]):.2f} | {wer([clip.text], [texts[name]]):.2%} |")

    def cancel(self) -> None:
        """Part 4: CPU the family server spends after a streaming client disconnects."""
        clip = max(self.clips, key=lambda c: c.duration)
        first, spent, until_idle = self.disconnect(clip)
        window = self.inprocess_window_cpu(clip)
        print(f"\n### 4. Cancellation: stream=true on {clip.id}, disconnected after the first delta\n")
        print(
            "| first delta (s) | CPU after disconnect (s) | until idle (s) | "
            f"in-process CPU of the first {WINDOW_SECONDS} s window (s, baseline) | target |"
        )
        print("|---|---|---|---|---|")
        print(
            f"| {seconds(first)} | {spent:.2f} | {until_idle:.1f} | {window:.2f} | CPU after disconnect <= "
            f"{window:.2f} |"
        )
        print(f"(idle: CPU time grew by < {IDLE_CPU_S * 1000:.0f} ms over {IDLE_OVER_S:g} s, that second included)")
        self.still_serving()

    def disconnect(self, clip: LongClip) -> tuple[float, float, float]:
        """Stream `clip`, drop the connection at the first text delta, then wait for the family server to be
        idle: seconds to the first delta, CPU seconds spent after the drop, seconds until idle."""
        cpu = TreeCpu(self.router.process.pid)
        cpu.total()
        first = float("inf")
        start = time.perf_counter()
        with httpx.Client(timeout=self.args.timeout) as http, clip.path.open("rb") as f:  # its own connection
            fields = {"model": MODEL, "stream": "true"}
            files = {"file": (clip.path.name, f, "audio/flac")}
            with http.stream("POST", self.url + "/v1/audio/transcriptions", files=files, data=fields) as response:
                for line in response.iter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["type"] == "transcript.text.delta":
                        first = time.perf_counter() - start
                        break
        dropped, at_drop = time.perf_counter(), cpu.total()
        history = [(dropped, at_drop)]
        while time.perf_counter() - dropped < self.args.cancel_wait:
            time.sleep(0.1)
            history.append((time.perf_counter(), cpu.total()))
            now, used = history[-1]
            before = [u for t, u in history if t <= now - IDLE_OVER_S]
            if before and used - before[-1] < IDLE_CPU_S:
                break
        now, used = history[-1]
        return first, used - at_drop, now - dropped

    def inprocess_window_cpu(self, clip: LongClip) -> float:
        """CPU seconds in-process faster-whisper (cpu_threads=1) takes for the clip's first window."""
        import faster_whisper

        self.inprocess.model(1)
        samples = faster_whisper.decode_audio(str(clip.path))[: WINDOW_SECONDS * SAMPLE_RATE]
        start = time.process_time()
        self.inprocess.transcribe(1, samples, word_timestamps=False)
        return time.process_time() - start

    def still_serving(self) -> None:
        """After the dropped stream, a normal request must be answered, and right."""
        clip = corpus("dev")[0]
        try:
            transcript = server_transcribe(self.http, self.url, clip.path, response_format="json")
        except (httpx.HTTPError, RuntimeError) as error:
            print(f"then a normal request ({clip.id}): FAILED, {error}")
            return
        error_rate = wer([clip.text], [transcript.text])
        verdict = "ok" if error_rate <= 0.15 else "WRONG"
        print(
            f"then a normal request ({clip.id}, {clip.duration:.1f} s): {verdict}, {transcript.latency:.2f} s, "
            f"WER {error_rate:.1%}: {transcript.text!r}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run, in this order")
    parser.add_argument("--skip-memory", action="store_true", help="leave out part 1 (the ~2 h files take minutes)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per clip and side in parts 2 and 5")
    parser.add_argument("--clips", nargs="+", default=[], help="long/ clip ids to use (default: both)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="in-process cpu_threads to try")
    parser.add_argument("--memory-seconds", type=float, default=7100, help="length of part 1's files")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one request may take")
    parser.add_argument("--cancel-wait", type=float, default=300, help="longest wait for idle after a disconnect")
    parser.add_argument("--max-upload-mb", type=float, default=250, help="the servers' upload limit (part 1)")
    args = parser.parse_args()
    if args.skip_memory:
        args.parts = [p for p in args.parts if p != "memory"]
    return args


def run_parts(bench: Bench, parts: list[str]) -> None:
    """Each part on its own: one that fails prints why and the server log's tail, and the others still run."""
    steps: dict[str, Callable[[], None]] = {
        "memory": bench.memory,
        "latency": bench.latency,
        "segments": bench.segments,
        "auto": bench.auto,
        "cancel": bench.cancel,
    }
    for part in parts:
        try:
            steps[part]()
        except Exception as error:
            print(f"\npart {part} FAILED: {error!r}\nserver log (tail):\n{bench.router.log()[-2000:]}", flush=True)


def main() -> None:
    args = parse_args()
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"run {now}, os.cpu_count()={os.cpu_count()}, {MODEL} (bundled, CPU int8) behind servers/router.py")
    print(f"parts: {', '.join(args.parts)}; upload limit {args.max_upload_mb:g} MB", flush=True)
    if "memory" in args.parts:
        memory_inputs(args.memory_seconds)  # built before the server starts, not while it is measured
    with tempfile.TemporaryDirectory() as folder:
        registry = write_registry(Path(folder), TINY_EN)
        env = {"OPEN_SPEECH_MAX_UPLOAD_MB": f"{args.max_upload_mb:g}"}
        with (
            ServerProcess("servers/router.py", "--registry", str(registry), env=env, name="bench-long") as router,
            httpx.Client(timeout=args.timeout) as http,
        ):
            server_transcribe(http, router.url, corpus("dev")[0].path)  # warm-up
            run_parts(Bench(args, router, http), args.parts)


if __name__ == "__main__":
    main()
