"""Who spoke when, as one LitServe spec: `POST /v1/audio/diarizations` (open-speech's own route; OpenAI
only diarizes inside transcriptions), with `GET /v1/models`, `GET /v1/models/{id}` and `GET /metrics`.

Per request, in the API process: check the model and the known speakers (`common.speakers`), decode
the upload to 16 kHz PCM (`common.audio`), queue a `DiarizationJob` for the family's LitAPI, and answer
with the one event its worker sends back: a `Diarization`, or an error. `specs.family.DiarizerAPI` is
the base of the LitAPIs behind it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import File, Form, UploadFile
from fastapi.responses import JSONResponse, Response

from common import metrics
from common.audio import Audio, AudioLimits
from common.errors import ApiError
from common.models import ModelCard
from common.speakers import NAMES, REFERENCES, Diarization, KnownSpeaker, parse_known_speakers
from specs.base import ModelSpec

if TYPE_CHECKING:
    from litserve import LitAPI

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


class DiarizationSpec(ModelSpec):
    def __init__(self, model: ModelCard, limits: AudioLimits, max_queued_seconds: float) -> None:
        super().__init__(model, limits, max_queued_seconds, "diarizing")
        self.api_path = PATH

    def pre_setup(self, lit_api: LitAPI) -> None:
        super().pre_setup(lit_api)
        self.add_endpoint(PATH, self.diarizations, ["POST"])

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
        self._check(model)
        known = await asyncio.to_thread(
            parse_known_speakers, known_speaker_names, known_speaker_references, self.limits
        )
        job = DiarizationJob(await self._decode_upload(file), known)
        results = [Diarization.from_json(message) async for message in self._events(job)]
        if not results:
            raise ApiError(500, "The model returned no result.", code="model_error")
        metrics.audio_processed(self.model.id, "diarize", job.duration)
        return JSONResponse({"object": "diarization", "model": self.model.id, **results[0].to_json()})
