"""A transcription server's way to its diarizer: the upload's decoded audio, sent to a diarization
server (`servers/diarization.py`, or the router, which forwards to the one it loads) while the model
transcribes it; the turns that come back are merged with the words by `common.speakers`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import IO

import httpx

from common.audio import SAMPLE_RATE, Audio
from common.errors import ApiError
from common.middleware import request_id
from common.speakers import Diarization, Turn
from specs.diarization import PATH


@dataclass
class DiarizerClient:
    url: str  # the diarization server's base URL (the router's, behind one)
    model: str  # the diarizer asked for
    key: str = ""  # that server's api_key
    _http: httpx.AsyncClient | None = None

    def start(self, audio: Audio, names: tuple[str, ...], references: tuple[str, ...]) -> asyncio.Task[list[Turn]]:
        """Diarize `audio` in the background. Its file is opened here, before the transcription job
        that shares it can end and delete it."""
        pcm = open(audio.path, "rb")  # noqa: SIM115 (closed by _turns)
        return asyncio.ensure_future(self._turns(pcm, names, references))

    async def _turns(self, pcm: IO[bytes], names: tuple[str, ...], references: tuple[str, ...]) -> list[Turn]:
        if self._http is None:  # made in the event loop that uses it
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5))
        headers = {"x-request-id": request_id.get()}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        form = {
            "model": self.model,
            "known_speaker_names[]": list(names),
            "known_speaker_references[]": list(references),
        }
        with pcm:
            try:
                response = await self._http.post(
                    self.url + PATH,
                    data=form,
                    files={"file": ("audio.pcm", pcm, f"audio/pcm;rate={SAMPLE_RATE}")},
                    headers=headers,
                )
            except httpx.TransportError as exc:
                raise _unavailable(f"cannot be reached ({exc!r})") from None
        if response.status_code != 200:
            raise _refused(response)
        return list(Diarization.from_json(response.json()).turns)


def _refused(response: httpx.Response) -> ApiError:
    """The diarizer's error: the client's (a bad reference, too much audio) as it was, others as a 503."""
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {"message": response.text[:200]}
    if response.status_code in (400, 413):
        return ApiError(response.status_code, error["message"], param=error.get("param"), code=error.get("code"))
    return _unavailable(f"failed ({response.status_code}: {error['message']})")


def _unavailable(why: str) -> ApiError:
    return ApiError(503, f"The diarizer {why}.", code="diarizer_unavailable", headers={"Retry-After": "1"})
