"""The bases every model family's LitAPI builds on: `FamilyAPI` (batches) and `ConcurrentFamilyAPI`
(jobs side by side) transcribe; `DiarizerAPI` tells who spoke when."""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import litserve as ls
from litserve.loops.base import LitLoop
from litserve.loops.continuous_batching_loop import ContinuousBatchingLoop, Output
from litserve.utils import LitAPIStatus, LoopResponseType

from common import metrics
from common.audio import AudioLimits, Cancelled
from common.config import ServerConfig, TranscriptionConfig
from common.errors import model_failed, queue_timeout
from common.jobs import TranscriptionJob, error_event
from common.models import ModelCard
from common.speakers import Diarization, Turn
from specs.diarization import DiarizationJob, DiarizationSpec, diarization_event
from specs.diarizer import DiarizerClient
from specs.heartbeat import workers_alive
from specs.openai_audio import OpenAIAudioSpec

logger = logging.getLogger("open_speech.family")

Step = list[dict[str, Any] | None]
T = TypeVar("T")
R = TypeVar("R")


class _Family(ls.LitAPI):
    """What both bases share: the family's config, and a /health that proves the workers are alive."""

    config: ServerConfig

    async def authorize(self) -> None:
        """Nothing to check here (`common.middleware.BearerAuth` checks keys). LitServe makes this every
        route's dependency; its default is a plain function, which FastAPI runs on a thread per request."""

    def format_encoded_response(self, data: Any) -> Any:
        """Events cross to the API process as they are (pickled on the pipe), not as JSON text to parse."""
        return data

    def health(self) -> bool:
        """Every inference worker's heartbeat is fresh (see `specs.serving.Heartbeat`): a worker stopped
        or stuck makes /health answer 503, so that the router restarts the server."""
        return workers_alive(self.spec.limits.spool.parent, self.config.hang_seconds)


class FamilyAPI(_Family):
    """A LitAPI that takes `TranscriptionJob`s and streams events (see `common.jobs`).

    Families implement `transcribe_batch`: given the jobs LitServe batched together, yield steps,
    each a list with one entry per job (an event, or None when that job has nothing new), until every
    job is finished. A failing job yields an error event; it must never fail its batch-mates.
    """

    def __init__(self, config: TranscriptionConfig, card: ModelCard) -> None:
        """`config` is the family's own config; it has max_batch_size and batch_timeout for LitServe."""
        super().__init__(
            spec=_spec(config, card),
            max_batch_size=config.max_batch_size,
            batch_timeout=config.batch_timeout,  # type: ignore[attr-defined]
            loop=_BatchLoop(),
        )
        self.config = config

    def transcribe_batch(self, jobs: list[TranscriptionJob]) -> Iterator[Step]:
        raise NotImplementedError

    # Whether the model decodes in the language it is told (Canary), rather than in the one it hears.
    told_language = False

    def spoken_language(self, job: TranscriptionJob) -> str:
        """The spoken language: as asked, else English. Among candidates (`languages[]`), a model that is
        told the language is told the first; the others do not say which they heard ("")."""
        if job.language or not job.languages:
            return job.language or "en"
        return job.languages[0] if self.told_language else ""

    def predict(self, jobs: list[TranscriptionJob]) -> Iterator[Step]:
        yield from metrics.observe_batch(self.spec.model.id, jobs, self.transcribe_batch(jobs))


def _spec(config: TranscriptionConfig, card: ModelCard) -> OpenAIAudioSpec:
    diarizer = None
    if config.diarizer_url:
        diarizer = DiarizerClient(config.diarizer_url, config.diarizer, config.diarizer_key)
    return OpenAIAudioSpec(card, AudioLimits(config.max_audio_seconds), config.max_queued_audio_seconds, diarizer)


def batch_or_singly(items: list[T], run: Callable[[list[T]], list[R]], what: str) -> Iterator[tuple[T, R | None]]:
    """`run(items)` as one batch, each item with its result; a batch that fails is retried item by item,
    so that one bad item fails alone (its result None, the error logged here)."""
    if not items:
        return
    try:
        results = run(items)
    except Exception:
        if len(items) == 1:
            logger.exception("%s failed", what)
            yield items[0], None
            return
        logger.warning("batch of %d failed (%s); retrying one by one", len(items), what, exc_info=True)
        for item in items:
            yield from batch_or_singly([item], run, what)
        return
    yield from zip(items, results, strict=True)


def only(size: int, index: int, event: dict[str, Any]) -> Step:
    """The step of a batch of `size` jobs that carries one event, for job `index`."""
    step: Step = [None] * size
    step[index] = event
    return step


def packed(size: int, events: list[tuple[int, dict[str, Any]]]) -> Iterator[Step]:
    """`(job index, event)` pairs of a batch of `size` jobs in as few steps as keep each job's order: the
    n-th event of every job goes in step n."""
    steps: list[Step] = []
    placed = [0] * size
    for index, event in events:
        if placed[index] == len(steps):
            steps.append([None] * size)
        steps[placed[index]][index] = event
        placed[index] += 1
    yield from steps


class ConcurrentFamilyAPI(_Family):
    """A family whose jobs each run on their own, side by side (faster-whisper: one `transcribe()` per
    job, on the model's CTranslate2 workers).

    It runs under LitServe's continuous batching: a job starts as soon as it arrives (up to
    `max_batch_size` at a time), instead of waiting for the batch ahead of it to end. A short request,
    such as a Realtime turn's final transcript, then never queues behind a long one.

    Families implement `transcribe_job`, which runs on a thread of its own and yields the job's events.
    """

    def __init__(self, config: TranscriptionConfig, card: ModelCard) -> None:
        """`config` is the family's own config; its max_batch_size is the most jobs running at once."""
        super().__init__(
            spec=_spec(config, card),
            max_batch_size=config.max_batch_size,
            loop=_JobsLoop(),
        )
        self.config = config
        self.running: dict[str, TranscriptionJob] = {}

    def transcribe_job(self, job: TranscriptionJob) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    # Made in the worker process (LitServe pickles the API to start it; pools and queues do not pickle).
    @functools.cached_property
    def _pool(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.max_batch_size, thread_name_prefix="job")

    @functools.cached_property
    def _events(self) -> queue.SimpleQueue[tuple[str, dict[str, Any] | None]]:
        return queue.SimpleQueue()  # (uid, event), None when the job is done

    # ---- LitServe's continuous batching interface ---------------------------------------------------
    def add_request(self, uid: str, job: TranscriptionJob) -> None:
        self.running[uid] = job
        if job.audio.cancelled:  # its client left while it was queued: never started
            self._events.put((uid, None))
            return
        limit = self.request_timeout
        if limit not in (None, -1, False) and time.monotonic() - job.queued_at > limit:
            # LitServe's batching loops refuse a job that waited this long; its continuous loop does not.
            self._events.put((uid, error_event(queue_timeout())))
            self._events.put((uid, None))
            return
        metrics.observe_start(self.spec.model.id, len(self.running))
        self._pool.submit(self._run, uid, job)

    def has_capacity(self) -> bool:
        return len(self.running) < self.max_batch_size

    def has_active_requests(self) -> bool:
        return bool(self.running)

    def step(self, prev_outputs: list[Output] | None) -> list[Output]:
        """The events ready now (waiting for the first): one output each; a finished job ends its stream."""
        ready = [self._events.get()]
        while not self._events.empty():
            ready.append(self._events.get())
        outputs = []
        for uid, event in ready:
            if event is None:
                del self.running[uid]
                outputs.append(Output(uid, "", LitAPIStatus.FINISH_STREAMING))
            else:
                outputs.append(Output(uid, event, LitAPIStatus.OK))
        return outputs

    def encode_response(self, output: Any, **kwargs: Any) -> Any:
        return output  # one event at a time (the batching loops' spec path takes a stream of them)

    def _run(self, uid: str, job: TranscriptionJob) -> None:
        start = time.perf_counter()
        try:
            for event in self.transcribe_job(job):
                self._events.put((uid, event))
        except Cancelled:
            logger.info("job stopped: its client left")
        except Exception:
            logger.exception("transcription failed")
            self._events.put((uid, error_event(model_failed())))
        finally:
            metrics.observe_job(self.spec.model.id, job, time.perf_counter() - start)
            self._events.put((uid, None))


class _JobsLoop(ContinuousBatchingLoop):
    """LitServe's continuous batching loop, asleep while no job runs (LitServe's own polls without pause)."""

    @functools.cached_property
    def work(self) -> asyncio.Event:
        return asyncio.Event()  # set when a job is added

    def add_request(self, uid: str, request: Any, lit_api: ls.LitAPI, *args: Any, **kwargs: Any) -> None:
        super().add_request(uid, request, lit_api, *args, **kwargs)
        self.work.set()

    async def run(self, lit_api: ls.LitAPI, *args: Any, **kwargs: Any) -> None:
        if not lit_api.has_active_requests():
            self.work.clear()
            await self.work.wait()
        await super().run(lit_api, *args, **kwargs)


class _BatchLoop(LitLoop):
    """Batches of jobs through the API's `predict`, which yields steps (a list of one event or None per
    job); each event goes to its job's API process as it comes, and a finished job's stream ends.

    It stands in for LitServe's batched streaming loop, which polls the job queue every millisecond (even
    idle) and sends a message to every job of the batch at every step, even one the step has nothing for.
    This one sleeps until a job arrives, then waits up to `batch_timeout` for more.
    """

    def run(self, lit_api: ls.LitAPI, device: str, worker_id: int, request_queue: Any, transport: Any, *_: Any) -> None:
        batch = [request_queue.get()]
        deadline = time.monotonic() + lit_api.batch_timeout
        while len(batch) < lit_api.max_batch_size and (wait := deadline - time.monotonic()) > 0:
            try:
                batch.append(request_queue.get(timeout=wait))
            except queue.Empty:
                break
        limit = lit_api.request_timeout
        ready = []
        for queue_id, uid, queued_at, job in batch:
            if limit not in (None, -1, False) and time.monotonic() - queued_at > limit:
                self._send(transport, queue_id, uid, error_event(queue_timeout()))
                self._finish(transport, queue_id, uid)
            else:
                ready.append((queue_id, uid, job))
        if not ready:
            return
        try:
            for step in lit_api.predict([job for _, _, job in ready]):
                for (queue_id, uid, _), event in zip(ready, step, strict=True):
                    if event is not None:
                        self._send(transport, queue_id, uid, event)
        except Exception as exc:
            logger.exception("a batch failed")
            for queue_id, uid, _ in ready:
                self.put_error_response(transport, queue_id, uid, exc, LoopResponseType.STREAMING)
            return
        for queue_id, uid, _ in ready:
            self._finish(transport, queue_id, uid)

    def _send(self, transport: Any, queue_id: int, uid: str, event: dict[str, Any]) -> None:
        self.put_response(transport, queue_id, uid, event, LitAPIStatus.OK, LoopResponseType.STREAMING)

    def _finish(self, transport: Any, queue_id: int, uid: str) -> None:
        self.put_response(transport, queue_id, uid, "", LitAPIStatus.FINISH_STREAMING, LoopResponseType.STREAMING)


class DiarizerAPI(_Family):
    """A LitAPI behind `DiarizationSpec`, a batch of `DiarizationJob`s at a time, one event per job.

    Families implement `prepare`, what a job needs from its recording (read one job at a time, so that
    one recording's samples are in memory at a time while it is prepared), and `diarize`, the turns of
    prepared jobs, together. A batch that fails is retried job by job, so one bad request fails alone.
    """

    def __init__(self, config: ServerConfig, card: ModelCard) -> None:
        """`config` is the family's own config; it has max_batch_size and batch_timeout for LitServe."""
        super().__init__(
            spec=DiarizationSpec(card, AudioLimits(config.max_audio_seconds), config.max_queued_audio_seconds),
            max_batch_size=config.max_batch_size,
            batch_timeout=config.batch_timeout,  # type: ignore[attr-defined]
            loop=_BatchLoop(),
        )
        self.config = config

    def prepare(self, job: DiarizationJob) -> Any:
        raise NotImplementedError

    def diarize(self, prepared: list[Any]) -> list[list[Turn]]:
        raise NotImplementedError

    def predict(self, jobs: list[DiarizationJob]) -> Iterator[Step]:
        """One step: an event per job (None for a job whose client left before it was read)."""
        yield from metrics.observe_batch(self.spec.model.id, jobs, self._steps(jobs))

    def _steps(self, jobs: list[DiarizationJob]) -> Iterator[Step]:
        """The batch's one step, made as it is asked for (so that the batch's metrics time it)."""
        step: list[dict[str, Any] | None] = [None] * len(jobs)
        prepared = []
        for index, job in enumerate(jobs):
            try:
                prepared.append((index, self.prepare(job)))
            except Cancelled:
                logger.info("job skipped: its client left")
            except Exception:
                logger.exception("preparing a recording failed")
                step[index] = error_event(model_failed("diarizing"))
        for (index, _), turns in batch_or_singly(
            prepared, lambda batch: self.diarize([item for _, item in batch]), "diarization"
        ):
            result = None if turns is None else Diarization(jobs[index].duration, tuple(turns))
            step[index] = error_event(model_failed("diarizing")) if result is None else diarization_event(result)
        yield step
