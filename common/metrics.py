"""Prometheus metrics at `/metrics`, recorded across every process of a server.

A family server is several processes (LitServe's main process, uvicorn API processes, inference
workers), and the router adds one family server per loaded model. They all record into
prometheus_client's multiprocess files, laid out as a tree of directories:

    $TMPDIR/open-speech-metrics-router-PID-XXXX/     the router's own directory (or under a user-set one)
        *.db                                         the router's metrics
        faster-whisper-XXXX/*.db                     one family server the router started: its main,
                                                     API and worker processes
        nemo-XXXX/*.db                               another

`setup()` gives each server a fresh directory at start: under `PROMETHEUS_MULTIPROC_DIR` when that is
set (by the user, or by the router for the family servers it starts), else in the temporary folder.
It then points `PROMETHEUS_MULTIPROC_DIR` at that directory, so the processes the server starts
(spawned workers, forked API processes, family servers) write under it. `/metrics` merges every file
below a server's directory: a family server shows its own processes (it can be scraped alone), the
router shows itself and every family server it started. Counters and histograms of processes that
have exited are kept (they are totals); their live gauges are dropped at each scrape. A directory
made in the temporary folder is removed when its server stops (`cleanup()`).

prometheus_client chooses between in-memory and file-backed values when it is imported, so it is
only imported (by `_metrics()`) once `setup()` has set the directory; nothing here imports torch.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import psutil
from starlette.responses import Response

from common import scratch

ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


_temporary: list[Path] = []  # the directory setup() made in the temporary folder, removed by cleanup()


def setup(name: str) -> Path:
    """A fresh metrics directory for this server and every process it starts; call before any metric is used."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before metrics.setup(): its values would not be shared")
    parent = os.environ.get(ENV)
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent)) if parent else scratch.folder(f"metrics-{name}")
    os.environ[ENV] = str(directory)
    if parent is None:
        _temporary.append(directory)
    return directory


def cleanup() -> None:
    """Remove the directory setup() made in the temporary folder (one under a set directory stays)."""
    while _temporary:
        shutil.rmtree(_temporary.pop(), ignore_errors=True)


class _Metrics:
    """Every metric open-speech records. Labels: model (served id), route (path template), status (code)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # Requests, by the HTTP layer that answered them: a family server, or the router in front of it.
        self.requests = {
            layer: Counter(
                f"open_speech_{prefix}requests",
                f"HTTP requests answered by the {layer}, by model, route and status.",
                ["model", "route", "status"],
            )
            for layer, prefix in (("server", ""), ("router", "router_"))
        }
        self.latency = {
            layer: Histogram(
                f"open_speech_{prefix}request_duration_seconds",
                f"Seconds from request to the last byte of the response (streams included), at the {layer}.",
                ["model", "route"],
                buckets=LATENCY_BUCKETS,
            )
            for layer, prefix in (("server", ""), ("router", "router_"))
        }
        self.audio_seconds = Counter(
            "open_speech_audio_seconds", "Seconds of audio transcribed, translated or diarized.", ["model", "task"]
        )
        self.queue_depth = Gauge(
            "open_speech_queue_depth",
            "Requests queued for or being processed by the model's workers.",
            ["model"],
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "open_speech_batch_size",
            "Requests per batch run by a worker (continuous batching: those running when one starts).",
            ["model"],
            buckets=BATCH_BUCKETS,
        )
        self.window_batch_size = Histogram(
            "open_speech_window_batch_size",
            "Windows of audio (of one or several requests) decoded in one batch (window batching, GPUs).",
            ["model"],
            buckets=BATCH_BUCKETS,
        )
        self.inference_seconds = Histogram(
            "open_speech_inference_seconds",
            "Seconds a worker spent on one batch (continuous batching: on one request).",
            ["model"],
            buckets=LATENCY_BUCKETS,
        )
        self.real_time_factor = Histogram(
            "open_speech_real_time_factor",
            "Per request: seconds from the start of its batch to its last result, divided by its audio seconds.",
            ["model"],
            buckets=RTF_BUCKETS,
        )
        self.gpu_allocated = Gauge(
            "open_speech_gpu_memory_allocated_bytes",
            "GPU memory held by torch tensors in the model's workers (torch families on CUDA only).",
            ["model", "device"],
            multiprocess_mode="livesum",
        )


@cache
def _metrics() -> _Metrics:
    return _Metrics()


# ---- the HTTP layer (common.middleware.RequestMetrics) -------------------------------------------------
def http_request(layer: str, model: str, route: str, status: int, seconds: float) -> None:
    """An HTTP request answered by `layer` (server or router)."""
    metrics = _metrics()
    metrics.requests[layer].labels(model, route, str(status)).inc()
    metrics.latency[layer].labels(model, route).observe(seconds)


# ---- the API process: audio and queue -----------------------------------------------------------------
def audio_processed(model: str, task: str, seconds: float) -> None:
    _metrics().audio_seconds.labels(model, task).inc(seconds)


def queue_depth(model: str) -> Any:
    """The model's queue-depth gauge: `inc()` when a request is queued, `dec()` when its answer is complete."""
    return _metrics().queue_depth.labels(model)


# ---- inference workers ----------------------------------------------------------------------------
class Job(Protocol):
    """What the workers' metrics read of a job: a transcription's (`common.jobs`) or a diarization's."""

    @property
    def duration(self) -> float: ...


def observe_batch(model: str, jobs: Sequence[Job], steps: Iterator[Any]) -> Iterator[Any]:
    """Pass a batch's steps through, recording its size, its time and each job's real-time factor.

    A step is a list with one entry per job (None when that job has nothing new); a job's processing
    time ends at its last entry.
    """
    metrics = _metrics()
    metrics.batch_size.labels(model).observe(len(jobs))
    start = time.perf_counter()
    last = [start] * len(jobs)
    try:
        for step in steps:
            now = time.perf_counter()
            for index, event in enumerate(step):
                if event is not None:
                    last[index] = now
            yield step
    finally:
        metrics.inference_seconds.labels(model).observe(time.perf_counter() - start)
        for job, end in zip(jobs, last, strict=True):
            if job.duration > 0:
                metrics.real_time_factor.labels(model).observe((end - start) / job.duration)
        _record_torch_memory(model)


def observe_start(model: str, running: int) -> None:
    """A job started beside others (continuous batching): the jobs now running count as its batch."""
    _metrics().batch_size.labels(model).observe(running)


def observe_window_batch(model: str, size: int) -> None:
    """A batch of `size` windows decoded together."""
    _metrics().window_batch_size.labels(model).observe(size)


def observe_job(model: str, job: Job, seconds: float) -> None:
    """A job of a continuously batched family ended after `seconds`."""
    metrics = _metrics()
    metrics.inference_seconds.labels(model).observe(seconds)
    if job.duration > 0:
        metrics.real_time_factor.labels(model).observe(seconds / job.duration)


def _record_torch_memory(model: str) -> None:
    torch = sys.modules.get("torch")  # only where the family already uses torch: never imported here
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    index = torch.cuda.current_device()
    _metrics().gpu_allocated.labels(model, f"cuda:{index}").set(torch.cuda.memory_allocated(index))


# ---- /metrics -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    """A model the router has loaded or is loading, for the router's gauges."""

    model: str
    family: str
    state: str  # ready, loading, or an external server's last probe
    in_flight: int = 0


class _Tree:
    """Collects every metrics file below this server's directory, after dropping dead processes' gauges."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

        files = sorted(self.root.rglob("*.db"))
        for path in files:
            match = _LIVE_GAUGE_FILE.fullmatch(path.name)
            if match and not psutil.pid_exists(int(match[1])):
                mark_process_dead(int(match[1]), str(path.parent))
        return MultiProcessCollector.merge([str(p) for p in files if p.exists()], accumulate=True)


class _Current:
    """Gauges read at scrape time: the router's models, and GPU memory from NVML where present."""

    def __init__(self, models: Iterable[LoadedModel] | None) -> None:
        self.models = models

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if self.models is not None:
            loaded = GaugeMetricFamily(
                "open_speech_loaded_models",
                "Models the router has loaded (1 per model).",
                labels=["model", "family", "state"],
            )
            in_flight = GaugeMetricFamily(
                "open_speech_router_in_flight", "Requests the router is proxying, per model.", labels=["model"]
            )
            for entry in self.models:
                loaded.add_metric([entry.model, entry.family, entry.state], 1)
                in_flight.add_metric([entry.model], entry.in_flight)
            yield loaded
            yield in_flight
        yield from _nvml_memory()


def _nvml_memory() -> Iterator[Any]:
    """Used and total memory of each GPU, when the NVML bindings (nvidia-ml-py) and a driver are present."""
    try:
        import pynvml
    except ImportError:
        return
    from prometheus_client.core import GaugeMetricFamily

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return
    try:
        used = GaugeMetricFamily("open_speech_gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu"])
        total = GaugeMetricFamily("open_speech_gpu_memory_total_bytes", "GPU memory size (NVML).", labels=["gpu"])
        for index in range(pynvml.nvmlDeviceGetCount()):
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            used.add_metric([str(index)], info.used)
            total.add_metric([str(index)], info.total)
        yield used
        yield total
    finally:
        pynvml.nvmlShutdown()


def response(models: Iterable[LoadedModel] | None = None) -> Response:
    """The Prometheus text exposition of this server's metrics tree, plus the router's `models`."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    directory = os.environ.get(ENV)
    if directory:
        registry.register(_Tree(Path(directory)))  # type: ignore[arg-type]
    registry.register(_Current(models))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
