"""What every family server's spec shares, whatever its routes: the model routes (`GET /v1/models`,
`GET /v1/models/{id}`, `GET /metrics`), readiness, uploads decoded to 16 kHz PCM off the event loop,
admission by queued audio, and a job's round trip through the queue to a worker and back.

`OpenAIAudioSpec` (transcriptions) and `DiarizationSpec` (who spoke when) build on it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import UploadFile
from fastapi.responses import Response
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus

from common import metrics
from common.audio import Audio, AudioError, AudioLimits, decode
from common.errors import ApiError, model_failed
from common.jobs import read_error
from common.models import ModelCard, model_object

if TYPE_CHECKING:
    from litserve import LitAPI


class Job(Protocol):
    """What a spec queues: a job with its decoded audio, which the spec deletes once the job is over."""

    audio: Audio

    @property
    def duration(self) -> float: ...


class ModelSpec(LitSpec):
    """A LitSpec serving one model; `doing` names its work in error messages ("transcribing")."""

    def __init__(self, model: ModelCard, limits: AudioLimits, max_queued_seconds: float, doing: str) -> None:
        super().__init__()
        self.model = model
        self.limits = limits
        self.admission = Admission(max_queued_seconds)
        self.doing = doing
        self._workers_ready = False

    @property
    def stream(self) -> bool:
        # Workers always stream events through LitServe's streaming loops; answers are assembled here.
        return True

    def pre_setup(self, lit_api: LitAPI) -> None:
        self.add_endpoint("/v1/models", self.list_models, ["GET"])
        self.add_endpoint("/v1/models/{model_id:path}", self.get_model, ["GET"])
        self.add_endpoint("/metrics", self.prometheus, ["GET"])

    # Worker side: jobs pass through unchanged; each step is one event (or a list, one per batch item).
    def decode_request(self, request: Any, context_kwargs: dict | None = None) -> Any:
        return request

    def encode_response(self, output: Iterator[Any], context_kwargs: dict | None = None) -> Iterator[Any]:
        yield from output

    # ---- model routes -------------------------------------------------------------------------
    async def list_models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_object(name) for name in self.model.names]}

    async def get_model(self, model_id: str) -> dict[str, Any]:
        if model_id not in self.model.names:
            raise unknown_model(model_id)
        return {**self._model_object(model_id), "config": self.model.settings}

    async def prometheus(self) -> Response:
        """Prometheus metrics of this server's processes (see `common.metrics`)."""
        return metrics.response()

    def _model_object(self, name: str) -> dict[str, Any]:
        return model_object(name, self.model.family, self.model.capabilities, root=self.model.id)

    # ---- request handling ---------------------------------------------------------------------
    def _check(self, model: str) -> None:
        """404 unless `model` names the model served here; 503 while no worker has finished its setup."""
        if model not in self.model.names:
            raise unknown_model(model)
        if not self._ready():
            raise ApiError(
                503, "The model is still loading; retry shortly.", code="model_not_ready", headers={"Retry-After": "2"}
            )

    def _ready(self) -> bool:
        """Whether a worker has finished its setup; asked of the Manager (a round trip) only until one has."""
        if not self._workers_ready:
            status = self._server.workers_setup_status if self._server else {}
            self._workers_ready = any(v == WorkerSetupStatus.READY for v in status.values())
        return self._workers_ready

    async def _decode_upload(self, file: UploadFile, allow_empty: bool = False) -> Audio:
        """The upload spooled as 16 kHz PCM (a live stream's last request may carry no new audio), decoded
        on a thread; if the client leaves meanwhile, the spool is deleted once the thread is done."""
        file.file.seek(0, 2)
        if file.file.tell() == 0 and not allow_empty:
            raise AudioError("The audio file is empty.", code="empty_file")
        file.file.seek(0)
        decoding = asyncio.ensure_future(
            asyncio.to_thread(decode, file.file, file.content_type, self.limits, allow_empty=allow_empty)
        )
        try:
            return await asyncio.shield(decoding)
        except asyncio.CancelledError:
            decoding.add_done_callback(lambda done: done.cancelled() or done.exception() or done.result().delete())
            raise

    async def _events(self, job: Job) -> AsyncIterator[dict[str, Any]]:
        """Queue `job`; its worker's events as they come, worker errors as `ApiError`s. However it ends
        (done, failed, its client gone), its audio is deleted: a worker still reading it stops there."""
        uid = uuid.uuid4()
        queue: deque = deque()
        event = asyncio.Event()
        self.response_buffer[uid] = ResponseBufferItem(response_queue=queue, event=event)
        depth = metrics.queue_depth(self.model.id)
        depth.inc()
        try:
            with self.admission.hold(job.duration):
                # A multiprocessing queue (see `specs.transport`): its put hands the job to a feeder thread.
                self.request_queue.put((self.response_queue_id, uid, time.monotonic(), job))
                async for data, status in self.data_streamer(queue, event, send_status=True):
                    if status == LitAPIStatus.ERROR:
                        raise model_failed(self.doing)  # the worker's batch failed: its log says why
                    if not data:
                        continue  # the end of the stream
                    if data["event"] == "error":
                        raise read_error(data)
                    yield data
        finally:
            job.audio.delete()
            depth.dec()
            self.response_buffer.pop(uid, None)


class Admission:
    """Audio seconds queued and in flight for the model (in this API process). Past `limit`, new requests
    get 503 with Retry-After instead of piling up: a request alone is always taken, however long."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.seconds = 0.0

    @contextmanager
    def hold(self, seconds: float) -> Iterator[None]:
        """Count `seconds` of audio while the block runs; 503 when there is too much already."""
        if self.seconds and self.seconds + seconds > self.limit:
            raise ApiError(
                503,
                f"The server has {self.seconds:.0f} s of audio to transcribe already (its limit is "
                f"{self.limit:g} s); retry later.",
                code="audio_queue_full",
                headers={"Retry-After": "10"},
            )
        self.seconds += seconds
        try:
            yield
        finally:
            self.seconds -= seconds


def unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or is not served here; see /v1/models.",
        param="model",
        code="model_not_found",
    )
