"""Serving CPU per request outside the model, layer by layer, through the router and from a family server alone.

    .venv/bin/python -m bench.overhead [--targets nemo onnx whisper] [--clients 16 32 64] [--passes 2]

Targets: the tests' tiny random-weight TDT model on `servers/nemo.py`, the same model exported to ONNX on
`servers/onnx.py`, and the bundled tiny.en on `servers/faster_whisper.py`, each on its server's defaults.
Each is started twice: behind `servers/router.py` (a registry file with the model as its default, which
the router loads as a child process), then alone. Requests are non-streaming JSON transcriptions of the
dev corpus (FLAC), `--passes` passes from the first `--clients` level of closed-loop clients.

CPU: before and after the measured run (after a warm-up), the user+system CPU time (psutil `cpu_times()`)
of every process of the server's tree is read, each process classified by role from its command line,
its parent and its sockets (LitServe 0.2.19 starts, from the family server's main process, a
multiprocessing Manager by fork, inference workers by spawn, and uvicorn API processes by fork):

- router: `servers.router` in the command line;
- inference worker: `multiprocessing.spawn ... spawn_main` (LitServe's spawned `inference-worker`);
- resource tracker: `multiprocessing.resource_tracker` (started with the first spawned worker);
- family main: the `servers.<family>` process whose parent has another command line (the LitServer, idle
  in `run()` while it monitors its workers);
- queue manager: a fork of the family main (same command line) that owns a Unix socket `pymp-*/listener-*`
  (the Manager serving the request queue, the workers' status dict and the response queues);
- family API: the other forks of the family main (uvicorn serving the routes, decoding uploads).

The same runs also read the server's `open_speech_batch_size` histogram (`/metrics`, outside the measured
window) for the mean batch the workers ran, and measure each role's CPU while idle for a few seconds.

In this process, on the same files, after the servers are stopped: decoding into a spool file
(`bench.families.spooled`, what the API process does per upload: the floor), then the model's
own compute on the decoded audio, by process CPU time: for NeMo the server's decode path without LitServe
(`NemoAPI.transcribe_batch`: preprocessor, encoder, greedy decoding with timestamps) in batches of the
server's mean batch size, on one torch thread, and again on torch's default threads as the worker runs
it (the difference is OpenMP threads spinning while they wait, which grows with contention for the
cores); for ONNX onnx-asr's Silero VAD adapter and `recognize()` in batches of that size, with the
server's session options; for faster-whisper `transcribe()` (beam 5, English, temperature fallback)
from `parallel` threads on one model with the server's workers and threads. The worker's own overhead
is the worker's CPU per request minus the model's compute.

Throughput: requests per second of the family server alone at each `--clients` level, beside the
in-process batch API on the same files (decoding, then NeMo `transcribe(batch_size=max_batch_size)`,
onnx-asr `recognize()` in batches of `max_batch_size`, faster-whisper as above), with the CPU per request
of the server's whole tree and of the in-process run. The machine's cores may be shared with other jobs:
CPU per request moves less than wall time, but compare within one run.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import psutil

from bench.families import spooled
from bench.router import one_request
from bench.transcription import Result, closed_loop
from common.audio import Audio
from tests.helpers import CACHE, TINY_EN, Clip, ServerProcess, corpus, write_registry

T = TypeVar("T")

ROLES = ("router", "family API", "queue manager", "family main", "resource tracker", "inference worker")
ALIAS = "whisper-1"  # every target answers to it, so that `bench.router.one_request` reaches each
IDLE_SECONDS = 3.0
WARM_UP_CLIPS = 8


@dataclass
class Target:
    name: str
    script: str
    family: str
    max_batch_size: int  # the server's default
    source: str = "bundled"  # the model, set by `build`

    def build(self, folder: Path) -> None:
        """Build the tiny model: NeMo's in `folder` (build_tdt rewrites its file, which other runs may be
        reading from .cache/nemo), its ONNX export in the cache (reused once complete)."""
        if self.family == "nemo":
            from tests.nemo_models import build_tdt

            self.source = str(build_tdt(folder / "nemo"))
        elif self.family == "onnx":
            from tests.onnx_models import build_tdt_onnx

            self.source = str(build_tdt_onnx(CACHE / "onnx" / "tiny-tdt", "tiny"))

    def entry(self) -> dict:
        """Its registry entry (configs/models.yaml's format)."""
        if self.family == "faster-whisper":
            return TINY_EN
        return {"id": self.name, "family": self.family, "source": self.source, "aliases": [ALIAS]}

    def alone_args(self) -> list[str]:
        if self.family == "faster-whisper":
            return []  # its defaults: bundled tiny.en, whisper-1 among its aliases
        return ["--model", self.source, "--name", self.name, "--aliases", ALIAS]


TARGETS = {
    "nemo": Target("tiny-tdt", "servers/nemo.py", "nemo", 16),  # NemoConfig.max_batch_size
    "onnx": Target("tiny-tdt-onnx", "servers/onnx.py", "onnx", 8),  # ServerConfig.max_batch_size
    "whisper": Target("tiny.en", "servers/faster_whisper.py", "faster-whisper", 8),
}


# ---- the process tree ------------------------------------------------------------------------------
Key = tuple[int, float]  # pid, create time: a pid reused by another process is another key


def role_of(process: psutil.Process) -> str:
    command = " ".join(process.cmdline())
    if "servers.router" in command:
        return "router"
    if "spawn_main" in command:
        return "inference worker"
    if "resource_tracker" in command:
        return "resource tracker"
    parent = process.parent()
    if parent is None or parent.cmdline() != process.cmdline():
        return "family main"
    listening = [c.laddr for c in process.net_connections("unix") if c.laddr]
    return "queue manager" if any("listener-" in path for path in listening) else "family API"


@dataclass
class Tree:
    """The processes under a server's root, each with its role, found once the server is up."""

    root: psutil.Process
    roles: dict[Key, str] = field(default_factory=dict)

    def processes(self) -> Iterator[tuple[Key, psutil.Process]]:
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                yield (process.pid, process.create_time()), process
            except psutil.NoSuchProcess:
                continue

    def classify(self) -> Tree:
        for key, process in self.processes():
            if key not in self.roles:
                self.roles[key] = role_of(process)
        return self

    def cpu(self) -> dict[Key, float]:
        """Seconds of user+system CPU of every live process of the tree."""
        seconds = {}
        for key, process in self.processes():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            seconds[key] = times.user + times.system
        return seconds

    def by_role(self, before: dict[Key, float], after: dict[Key, float]) -> dict[str, float]:
        """CPU seconds spent between two readings, summed by role (a process gone meanwhile is lost)."""
        self.classify()
        spent = dict.fromkeys(ROLES, 0.0)
        for key, seconds in after.items():
            role = self.roles.get(key, "other")
            spent[role] = spent.get(role, 0.0) + seconds - before.get(key, 0.0)
        lost = set(before) - set(after)
        if lost:
            print(f"    warning: {len(lost)} process(es) exited during the run; their CPU is not counted")
        return spent

    def describe(self) -> str:
        self.classify()
        counts: dict[str, int] = {}
        for role in self.roles.values():
            counts[role] = counts.get(role, 0) + 1
        return ", ".join(f"{n} {role}" for role, n in counts.items())


# ---- the server side -------------------------------------------------------------------------------
@dataclass
class Measured:
    """One closed-loop run against a server: its wall time, requests and CPU seconds by role."""

    clients: int
    requests: int
    wall: float
    cpu: dict[str, float]
    batch: float  # the workers' mean batch (jobs running together) over the run

    @property
    def rate(self) -> float:
        return self.requests / self.wall

    def ms(self, role: str) -> float:
        return 1000 * self.cpu.get(role, 0.0) / self.requests

    @property
    def tree_ms(self) -> float:
        return 1000 * sum(self.cpu.values()) / self.requests


@dataclass
class ServerRun:
    target: Target
    via_router: bool
    runs: list[Measured]
    idle: dict[str, float]  # CPU seconds per second, by role, with no request


def batch_histogram(http: httpx.Client, url: str) -> tuple[float, float]:
    """(sum, count) of the workers' batch sizes so far, from the server's /metrics."""
    text = http.get(url + "/metrics").text
    totals = {}
    for kind in ("sum", "count"):
        found = re.findall(rf"^open_speech_batch_size_{kind}{{[^}}]*}} (\S+)$", text, re.MULTILINE)
        totals[kind] = sum(float(value) for value in found)
    return totals["sum"], totals["count"]


FAILED = "(failed)"


def requester(http: httpx.Client, url: str) -> Callable[[Clip, bytes], Result]:
    """One non-streaming JSON transcription of a clip, for `closed_loop`; a failure is kept, not raised."""

    def one(clip: Clip, data: bytes) -> Result:
        start = time.perf_counter()
        try:
            latency = one_request(http, url, data)
        except httpx.HTTPError as exc:
            print(f"    request failed: {exc!r}", flush=True)
            return Result(clip, time.perf_counter() - start, 0, FAILED)
        return Result(clip, latency, latency, "")

    return one


def measure(tree: Tree, http: httpx.Client, url: str, clips: list[Clip], clients: int, passes: int) -> Measured:
    """`passes` over `clips` from `clients` closed-loop clients; per-request figures count answered requests."""
    one = requester(http, url)
    batches = batch_histogram(http, url)
    tree.classify()
    before = tree.cpu()
    wall, answered = 0.0, 0
    for _ in range(passes):
        seconds, results = closed_loop(clips, clients, one)
        wall += seconds
        answered += sum(r.text != FAILED for r in results)
    after = tree.cpu()
    if answered < len(clips) * passes:
        print(f"    warning: {len(clips) * passes - answered} requests failed", flush=True)
    total, count = (now - then for now, then in zip(batch_histogram(http, url), batches, strict=True))
    return Measured(clients, max(1, answered), wall, tree.by_role(before, after), total / count if count else 0)


def idle_cpu(tree: Tree) -> dict[str, float]:
    before = tree.cpu()
    time.sleep(IDLE_SECONDS)
    return {role: seconds / IDLE_SECONDS for role, seconds in tree.by_role(before, tree.cpu()).items()}


def serve_and_measure(
    target: Target, via_router: bool, clips: list[Clip], levels: list[int], passes: int, folder: Path
) -> ServerRun:
    """Start the target (behind a router, or alone), warm it, measure idle, then each client level."""
    if via_router:
        registry = write_registry(folder, target.entry(), default=target.entry()["id"])
        server = ServerProcess("servers/router.py", "--registry", str(registry), name=f"overhead-router-{target.name}")
    else:
        server = ServerProcess(target.script, *target.alone_args(), name=f"overhead-{target.name}")
    with server, httpx.Client(timeout=600, limits=httpx.Limits(max_connections=max(levels) + 8)) as http:
        tree = Tree(psutil.Process(server.process.pid))
        closed_loop(clips[:WARM_UP_CLIPS], 4, requester(http, server.url))
        print(f"  {target.name} {'via router' if via_router else 'alone'}: {tree.describe()}", flush=True)
        idle = idle_cpu(tree)
        runs = []
        for clients in levels:
            runs.append(measure(tree, http, server.url, clips, clients, passes if clients == levels[0] else 1))
            m = runs[-1]
            print(
                f"    {clients} clients: {m.rate:.1f} req/s, tree {m.tree_ms:.1f} CPU ms/req, mean batch {m.batch:.1f}",
                flush=True,
            )
    return ServerRun(target, via_router, runs, idle)


# ---- in this process -------------------------------------------------------------------------------
@dataclass
class ModelCost:
    """CPU and wall seconds of the model's own work in this process, over every request."""

    how: str  # how it ran (batch, threads)
    cpu: float  # the model as the server's worker runs it
    api_cpu: float  # the family's in-process batch API
    api_wall: float
    extra: dict[str, float] = field(default_factory=dict)  # other ways it ran, CPU seconds by label


@dataclass
class Local:
    """What the same files cost in this process: decoding, the model alone, and the batch API."""

    requests: int
    decode_cpu: float  # decoding into a spool file, as the API process does
    decode_wall: float
    model: ModelCost

    def ms(self, seconds: float) -> float:
        """Milliseconds per request of `seconds` over every request."""
        return 1000 * seconds / self.requests

    @property
    def api_rate(self) -> float:
        """Requests per second of decoding, then the batch API."""
        return self.requests / (self.decode_wall + self.model.api_wall)


def clock(work: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of this whole process, all its threads, and wall seconds) that `work()` took."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def decode_all(clips: list[Clip]) -> tuple[list[Audio], float, float]:
    """Each clip decoded into a spool file as the API process does it; the CPU and wall seconds it took.
    The caller deletes the files."""
    spools = []
    cpu, wall = time.process_time(), time.perf_counter()
    for clip in clips:
        spools.append(spooled(clip.path))
    return spools, time.process_time() - cpu, time.perf_counter() - wall


def batches(audio: list[T], size: int) -> Iterator[list[T]]:
    for first in range(0, len(audio), size):
        yield audio[first : first + size]


def nemo_local(target: Target, spools: list[Audio], batch: int) -> ModelCost:
    """The server's own decode path (`NemoAPI.transcribe_batch`: reading the spooled audio, preprocessor,
    encoder, greedy decoding with timestamps, segments) at `batch`, on one torch thread (its compute) and
    on torch's default threads as the worker runs it (OpenMP threads spin while they wait: CPU, not
    compute); then NeMo `transcribe()` at `max_batch_size` on the default threads."""
    import torch

    from common.jobs import TranscriptionJob
    from servers.nemo import NemoAPI, NemoConfig, load_model, model_card, read_config, resolve_auto

    source = target.source
    config = resolve_auto(NemoConfig(model=source, name=target.name, max_batch_size=target.max_batch_size))
    api = NemoAPI(config, model_card(config, read_config(source)))
    api.setup("cpu")
    jobs = [TranscriptionJob(audio) for audio in spools]

    def server_path() -> None:
        for group in batches(jobs, batch):
            for _step in api.transcribe_batch(group):
                pass

    threads = torch.get_num_threads()
    for _step in api.transcribe_batch(jobs[:batch]):  # warm-up
        pass
    torch.set_num_threads(1)
    try:
        one_thread, _ = clock(server_path)
    finally:
        torch.set_num_threads(threads)
    default_threads, _ = clock(server_path)
    audio = [a.read() for a in spools]
    model = load_model(source, "cpu").eval()
    model.transcribe(audio[:4], batch_size=target.max_batch_size, verbose=False)  # warm-up
    api_cpu, api_wall = clock(lambda: model.transcribe(audio, batch_size=target.max_batch_size, verbose=False))
    extra = {f"the same on torch's {threads} threads, as the worker runs it": default_threads}
    return ModelCost(f"NemoAPI.transcribe_batch, batch {batch}, 1 torch thread", one_thread, api_cpu, api_wall, extra)


def onnx_local(target: Target, audio: list[np.ndarray], batch: int) -> ModelCost:
    """onnx-asr's VAD adapter and recognize() as the server sets it up: at `batch`, then at max_batch_size."""
    import onnx_asr

    from servers.onnx import BundledSileroVad, OnnxConfig, _source, resolve_auto, session_options

    config = resolve_auto(OnnxConfig(model=target.source, device="cpu"))
    model, path = _source(config)
    asr = onnx_asr.load_model(model, path, sess_options=session_options(config))  # type: ignore[arg-type]

    def run(size: int) -> Callable[[], None]:
        vad = asr.with_vad(BundledSileroVad(), batch_size=size, max_speech_duration_s=config.max_segment_seconds)

        def work() -> None:
            for group in batches(audio, size):
                for pieces in vad.recognize(group):
                    list(pieces)  # the VAD adapter recognizes lazily, as its results are read

        return work

    clock(lambda: [list(p) for p in asr.with_vad(BundledSileroVad()).recognize(audio[:4])])  # warm-up
    model_cpu, _ = clock(run(batch))
    api_cpu, api_wall = clock(run(target.max_batch_size))
    return ModelCost(f"VAD + recognize, batch {batch}, {config.threads} threads", model_cpu, api_cpu, api_wall)


def whisper_local(target: Target, clips: list[Clip], audio: list[np.ndarray]) -> ModelCost:
    """faster-whisper transcribe() on the server's settings, `parallel` threads over one model."""
    from faster_whisper import WhisperModel

    from servers.faster_whisper import FALLBACK_TEMPERATURES, FasterWhisperConfig, model_path, resolve_auto

    config = resolve_auto(FasterWhisperConfig(device="cpu"))
    model = WhisperModel(
        model_path(config.model),
        device="cpu",
        compute_type=config.compute_type,
        cpu_threads=config.cpu_threads,
        num_workers=config.parallel,
    )
    decoded = {clip.id: a for clip, a in zip(clips, audio, strict=True)}

    def one(clip: Clip, _data: bytes) -> Result:
        segments, _ = model.transcribe(
            decoded[clip.id],
            language="en",
            beam_size=config.beam_size,
            temperature=FALLBACK_TEMPERATURES,
            condition_on_previous_text=config.condition_on_previous_text,
            vad_filter=config.vad_filter,
        )
        return Result(clip, 0, 0, "".join(s.text for s in segments))

    closed_loop(clips[:2], 1, one)  # warm-up
    cpu, wall = clock(lambda: closed_loop(clips, config.parallel, one))
    how = f"transcribe, {config.parallel} threads x {config.cpu_threads} CTranslate2 thread"
    return ModelCost(how, cpu, cpu, wall)


def local(target: Target, clips: list[Clip], passes: int, batch: int) -> Local:
    chosen = clips * passes
    spools, decode_cpu, decode_wall = decode_all(chosen)
    try:
        if target.family == "nemo":
            model = nemo_local(target, spools, batch)
        elif target.family == "onnx":
            model = onnx_local(target, [a.read() for a in spools], batch)
        else:
            model = whisper_local(target, chosen, [a.read() for a in spools])
    finally:
        for audio in spools:
            audio.delete()
    return Local(len(chosen), decode_cpu, decode_wall, model)


# ---- tables ----------------------------------------------------------------------------------------
def label(run: ServerRun) -> str:
    return "via router" if run.via_router else "alone"


def layer_table(target: Target, runs: list[ServerRun], mine: Local) -> str:
    """One row per layer, CPU ms per request in each configuration, and each role's CPU while idle."""
    header = " | ".join(f"{label(r)} CPU ms/req" for r in runs)
    idle_header = " | ".join(f"idle {label(r)} CPU ms/s" for r in runs)
    rows = [f"| layer | {header} | {idle_header} |", "|---" * (1 + 2 * len(runs)) + "|"]
    model = mine.ms(mine.model.cpu)

    def row(name: str, value: Callable[[Measured], float], role: str | None = None) -> None:
        cells = " | ".join(f"{value(r.runs[0]):.2f}" for r in runs)
        idles = " | ".join(f"{1000 * r.idle.get(role, 0.0):.1f}" if role else "" for r in runs)
        rows.append(f"| {name} | {cells} | {idles} |")

    for role in ROLES:
        if any(r.runs[0].cpu.get(role, 0.0) for r in runs):
            row(role, lambda m, role=role: m.ms(role), role)
    row("· family API minus the decode floor", lambda m: m.ms("family API") - mine.ms(mine.decode_cpu))
    row(f"· model compute (in-process: {mine.model.how})", lambda m: model)
    for name, seconds in mine.model.extra.items():
        row(f"· {name} (in-process)", lambda m, seconds=seconds: mine.ms(seconds))
    row("· worker's own overhead (worker minus model compute)", lambda m: m.ms("inference worker") - model)
    row("**whole tree**", lambda m: m.tree_ms)
    row("**total outside the model** (whole tree minus model compute)", lambda m: m.tree_ms - model)
    row("· of which the decode floor (the API process's decoding, in-process)", lambda m: mine.ms(mine.decode_cpu))
    summary = "; ".join(
        f"{label(r)}: {r.runs[0].requests} requests from {r.runs[0].clients} clients, {r.runs[0].rate:.1f} req/s, "
        f"mean batch {r.runs[0].batch:.1f}"
        for r in runs
    )
    return f"### {target.name} ({target.script})\n\n{summary}\n\n" + "\n".join(rows)


def throughput_table(results: list[tuple[Target, ServerRun, Local]]) -> str:
    rows = [
        "| target | clients | server req/s | server tree CPU ms/req | in-process batch API req/s | "
        "in-process CPU ms/req (decode + batch API) | server / in-process req/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for target, alone, mine in results:
        in_process = mine.ms(mine.decode_cpu + mine.model.api_cpu)
        for m in alone.runs:
            rows.append(
                f"| {target.name} | {m.clients} | {m.rate:.1f} | {m.tree_ms:.1f} | {mine.api_rate:.1f} | "
                f"{in_process:.1f} | {m.rate / mine.api_rate:.2f} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument(
        "--clients",
        nargs="+",
        type=int,
        default=[16, 32, 64],
        help="closed-loop clients: the first level for the CPU breakdown, every level for throughput (alone)",
    )
    parser.add_argument(
        "--passes", type=int, default=2, help="passes over the corpus at the first level (one at the others)"
    )
    parser.add_argument("--corpus", default="dev")
    args = parser.parse_args()

    clips = corpus(args.corpus)
    seconds = sum(c.duration for c in clips) / len(clips)
    print(f"{len(clips)} clips of {seconds:.1f} s on average, {psutil.cpu_count()} cores", flush=True)
    results = []
    tables = []
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        for name in args.targets:
            target = TARGETS[name]
            target.build(Path(folder))
            routed = serve_and_measure(target, True, clips, args.clients[:1], args.passes, Path(folder))
            alone = serve_and_measure(target, False, clips, args.clients, args.passes, Path(folder))
            mine = local(target, clips, args.passes, max(1, round(alone.runs[0].batch)))
            print(
                f"  in-process: decode {mine.ms(mine.decode_cpu):.1f} CPU ms/req, model {mine.ms(mine.model.cpu):.1f} "
                f"({mine.model.how}), batch API {mine.ms(mine.model.api_cpu):.1f} ({mine.api_rate:.1f} req/s)",
                flush=True,
            )
            results.append((target, alone, mine))
            tables.append(layer_table(target, [routed, alone], mine))
    print()
    print("\n\n".join(tables))
    print("\n### Throughput, family server alone\n")
    print(throughput_table(results))


if __name__ == "__main__":
    main()
