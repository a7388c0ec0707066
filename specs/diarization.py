"""Who spoke when, as one LitServe spec: `POST /v1/audio/diarizations` (open-speech's own route; OpenAI
only diarizes inside transcriptions), with `GET /v1/models`, `GET /v1/models/{id}` and `GET /metrics`.

Per request, in the API process: check the model and the known speakers (`common.speakers`), decode
the upload to 16 kHz PCM (`common.audio`), queue a `DiarizationJob` for the family's LitAPI, and answer
with the one event its worker sends back: a `Diarization`, or an error. `DiarizerAPI` is the base of the
LitAPIs behind it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import File, Form, UploadFile
from fastapi.responses import JSONResponse, Response
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus

from common import metrics
from common.audio import Audio, AudioLimits, Cancelled, decode
from common.config import ServerConfig
from common.errors import ApiError, model_failed, queue_timeout
from common.jobs import error_event, read_error
from common.models import ModelCard, model_object
from common.speakers import NAMES, REFERENCES, Diarization, KnownSpeaker, Turn, parse_known_speakers
from specs.family import _Family, batch_or_singly
from specs.openai_audio import Admission, unknown_model

if TYPE_CHECKING:
    from litserve import LitAPI

logger = logging.getLogger("open_speech.diarization")
PATH = "/v1/audio/diarizations"


@dataclass
class DiarizationJob:
    """What crosses to the worker: the upload as 16 kHz PCM in a file, and the voices to name."""

    audio: Audio
    known: tuple[KnownSpeaker, ...] = ()

    @property
    def duration(self) -> float:
        return self.audio.duration


def diarization_event(result: Diarization) -> dict[str, Any]:
    """A job's result, as its worker sends it (errors go as `common.jobs.error_event`s)."""
    return {"event": "diarization", **result.to_json()}


class DiarizationSpec(LitSpec):
    def __init__(self, model: ModelCard, limits: AudioLimits, max_queued_seconds: float) -> None:
        super().__init__()
        self.api_path = PATH
        self.model = model
        self.limits = limits
        self.admission = Admission(max_queued_seconds)
        self._workers_ready = False

    @property
    def stream(self) -> bool:
        # Workers answer through LitServe's streaming loops, as the transcription families do: one event.
        return True

    def pre_setup(self, lit_api: LitAPI) -> None:
        self.add_endpoint(PATH, self.diarizations, ["POST"])
        self.add_endpoint("/v1/models", self.list_models, ["GET"])
        self.add_endpoint("/v1/models/{model_id:path}", self.get_model, ["GET"])
        self.add_endpoint("/metrics", self.prometheus, ["GET"])

    # Worker side: jobs pass through unchanged; each step is one event (or a list, one per batch item).
    def decode_request(self, request: DiarizationJob, context_kwargs: dict | None = None) -> DiarizationJob:
        return request

    def encode_response(self, output: Iterator[Any], context_kwargs: dict | None = None) -> Iterator[Any]:
        yield from output

    # ---- routes -------------------------------------------------------------------------------
    async def diarizations(
        self,
        file: UploadFile = File(..., description="The audio file: any format ffmpeg reads, or raw pcm16."),
        model: str = Form(..., description="A served diarizer id or alias (see /v1/models)."),
        known_speaker_names: list[str] | None = Form(
            None, alias=NAMES, description="Up to 4 names, each given to the speaker whose voice its reference is."
        ),
        known_speaker_references: list[str] | None = Form(
            None, alias=REFERENCES, description="Data URLs of 2-10 s of each known voice (data:audio/wav;base64,...)."
        ),
    ) -> Response:
        if model not in self.model.names:
            raise unknown_model(model)
        if not self._ready():
            raise ApiError(
                503, "The model is still loading; retry shortly.", code="model_not_ready", headers={"Retry-After": "2"}
            )
        known = await asyncio.to_thread(
            parse_known_speakers, known_speaker_names, known_speaker_references, self.limits
        )
        job = DiarizationJob(await self._decode_upload(file), known)
        result = await self._run(job)
        metrics.audio_processed(self.model.id, "diarize", job.duration)
        return JSONResponse({"object": "diarization", "model": self.model.id, **result.to_json()})

    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_object(name) for name in self.model.names]}

    async def get_model(self, model_id: str) -> dict[str, Any]:
        if model_id not in self.model.names:
            raise unknown_model(model_id)
        return {**self._model_object(model_id), "config": self.model.settings}

    async def prometheus(self) -> Response:
        """Prometheus metrics of this server's processes (see `common.metrics`)."""
        return metrics.response()

    # ---- request handling ---------------------------------------------------------------------
    async def _decode_upload(self, file: UploadFile) -> Audio:
        """The upload spooled as 16 kHz PCM, decoded on a thread; if the client leaves meanwhile, the spool
        is deleted once the thread is done."""
        decoding = asyncio.ensure_future(asyncio.to_thread(decode, file.file, file.content_type, self.limits))
        try:
            return await asyncio.shield(decoding)
        except asyncio.CancelledError:
            decoding.add_done_callback(lambda done: done.cancelled() or done.exception() or done.result().delete())
            raise

    def _ready(self) -> bool:
        """Whether a worker has finished its setup; asked of the Manager (a round trip) only until one has."""
        if not self._workers_ready:
            status = self._server.workers_setup_status if self._server else {}
            self._workers_ready = any(v == WorkerSetupStatus.READY for v in status.values())
        return self._workers_ready

    async def _run(self, job: DiarizationJob) -> Diarization:
        """Queue `job` and wait for its result; worker errors become `ApiError`s. However it ends (done,
        failed, its client gone), its audio is deleted: a worker yet to read it skips it."""
        uid = uuid.uuid4()
        queue: deque = deque()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=queue, event=event)
        depth = metrics.queue_depth(self.model.id)
        depth.inc()
        result = None
        try:
            with self.admission.hold(job.duration):
                self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
                async for data, status in self.data_streamer(queue, event, send_status=True):
                    if status == LitAPIStatus.ERROR:
                        # LitServe's batching loops refuse a job that waited too long with a 504.
                        raise queue_timeout() if getattr(data, "status_code", 500) == 504 else model_failed("diarizing")
                    if not data:
                        continue  # a batch step that had nothing for this request
                    message = json.loads(data)
                    if message["event"] == "error":
                        raise read_error(message)
                    result = Diarization.from_json(message)
        finally:
            job.audio.delete()
            depth.dec()
            self.response_buffer.pop(uid, None)
        if result is None:
            raise ApiError(500, "The model returned no result.", code="model_error")
        return result

    def _model_object(self, name: str) -> dict[str, Any]:
        return model_object(name, self.model.family, self.model.capabilities, root=self.model.id)


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
        )
        self.config = config

    def prepare(self, job: DiarizationJob) -> Any:
        raise NotImplementedError

    def diarize(self, prepared: list[Any]) -> list[list[Turn]]:
        raise NotImplementedError

    def predict(self, x: DiarizationJob | list[DiarizationJob]) -> Iterator[Any]:
        """One step: an event per job (None for a job whose client left before it was read)."""
        jobs = x if isinstance(x, list) else [x]
        for step in metrics.observe_batch(self.spec.model.id, jobs, self._steps(jobs)):
            if self.max_batch_size > 1:
                yield step
            elif step[0] is not None:
                yield step[0]

    def _steps(self, jobs: list[DiarizationJob]) -> Iterator[list[dict[str, Any] | None]]:
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
