"""Bad input gets a 4xx in OpenAI's error shape, and the server keeps serving."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import MAX_AUDIO_SECONDS, MAX_UPLOAD_MB
from tests.helpers import ServerProcess, beside_a_stream, convert, corpus

CLIP = corpus("dev")[0]
LONG = max(corpus("long"), key=lambda c: c.duration)


def post(server: ServerProcess, files: dict | None, data: dict, path: str = "transcriptions") -> httpx.Response:
    return httpx.post(f"{server.url}/v1/audio/{path}", files=files, data=data, timeout=60)


def assert_openai_error(response: httpx.Response, status: int, param: str | None, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    assert error["param"] == param
    if code:
        assert error["code"] == code


AUDIO = {"file": ("clip.flac", CLIP.path.read_bytes(), "audio/flac")}

BAD_REQUESTS = {
    "empty file": ({"file": ("empty.wav", b"", "audio/wav")}, {"model": "whisper-1"}, 400, "file", "empty_file"),
    "random bytes named .wav": (
        {"file": ("noise.wav", os.urandom(20_000), "audio/wav")},
        {"model": "whisper-1"},
        400,
        "file",
        "invalid_audio",
    ),
    "a text file": (
        {"file": ("notes.txt", b"minutes of the meeting\n" * 100, "text/plain")},
        {"model": "whisper-1"},
        400,
        "file",
        "invalid_audio",
    ),
    "missing file": (None, {"model": "whisper-1"}, 422, "file", "missing_required_parameter"),
    "missing model": (AUDIO, {}, 422, "model", "missing_required_parameter"),
    "unknown response_format": (AUDIO, {"model": "whisper-1", "response_format": "xml"}, 400, "response_format", None),
    "diarized_json": (AUDIO, {"model": "whisper-1", "response_format": "diarized_json"}, 400, "response_format", None),
    "unknown model": (AUDIO, {"model": "whisper-9"}, 404, "model", "model_not_found"),
    "bad language": (AUDIO, {"model": "whisper-1", "language": "klingon"}, 400, "language", None),
    "language the model lacks": (AUDIO, {"model": "whisper-1", "language": "de"}, 400, "language", None),
    "bad temperature": (AUDIO, {"model": "whisper-1", "temperature": "hot"}, 400, "temperature", None),
    "bad granularity": (
        AUDIO,
        {"model": "whisper-1", "timestamp_granularities[]": "sentence"},
        400,
        "timestamp_granularities[]",
        None,
    ),
    "bad stream flag": (AUDIO, {"model": "whisper-1", "stream": "maybe"}, 400, "stream", None),
    "undecodable audio, streaming": (
        {"file": ("noise.mp3", os.urandom(20_000), "audio/mpeg")},
        {"model": "whisper-1", "stream": "true"},
        400,
        "file",
        "invalid_audio",
    ),
    "audio over the length limit": (
        {"file": ("long.flac", LONG.path.read_bytes(), "audio/flac")},
        {"model": "whisper-1"},
        400,
        "file",
        "audio_too_long",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_gets_an_openai_error_and_the_server_keeps_serving(
    whisper_server: ServerProcess, case: str
) -> None:
    files, data, status, param, code = BAD_REQUESTS[case]
    assert_openai_error(post(whisper_server, files, data), status, param, code)
    assert post(whisper_server, AUDIO, {"model": "whisper-1"}).json()["text"]


def test_length_limit_is_this_servers() -> None:
    assert LONG.duration > MAX_AUDIO_SECONDS


def test_oversize_upload_gets_413(whisper_server: ServerProcess) -> None:
    big = os.urandom(int((MAX_UPLOAD_MB + 1) * 1_000_000))
    assert_openai_error(
        post(whisper_server, {"file": ("big.wav", big, "audio/wav")}, {"model": "whisper-1"}),
        413,
        "file",
        "file_too_large",
    )

    # Without a Content-Length (chunked), the body is cut off as it passes the limit.
    def chunks():
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        for _ in range(MAX_UPLOAD_MB + 1):
            yield os.urandom(1_000_000)

    response = httpx.post(
        f"{whisper_server.url}/v1/audio/transcriptions",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=x"},
        timeout=60,
    )
    assert_openai_error(response, 413, "file", "file_too_large")  # with its code, as when it is declared
    assert post(whisper_server, AUDIO, {"model": "whisper-1"}).json()["text"]


def test_a_request_that_waits_past_the_queue_timeout_gets_503(tmp_path: Path) -> None:
    """One request at a time, a 1 s queue timeout: a request queued behind a long one is refused."""
    long_clip = convert(LONG.path, tmp_path / "long.flac", "-t", "100")  # seconds of decoding
    args = ("--max-batch-size", "1", "--queue-timeout", "1")
    with ServerProcess("servers/faster_whisper.py", *args, name="queue-timeout") as server:
        queued = functools.partial(post, server, AUDIO, {"model": "whisper-1"})
        refused, _ = beside_a_stream(server, long_clip, "whisper-1", queued)
        assert_openai_error(refused, 503, None, "queue_timeout")
        assert refused.headers["retry-after"] == "5"
        assert queued().json()["text"]  # and it serves the next one


def test_sdk_raises_readable_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.audio.transcriptions.create(model="nope", file=CLIP.path)
    with pytest.raises(openai.BadRequestError, match="could not be decoded"):
        # Text, not random bytes: those are now and then probed as a container without audio.
        client.audio.transcriptions.create(model="whisper-1", file=("x.wav", b"this is not audio\n" * 200))
