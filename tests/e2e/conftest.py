"""Servers shared by the tests: started once per session, as a user would start them."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.helpers import ServerProcess, multilingual_whisper

# Small limits, so that the limit tests need no huge uploads.
MAX_UPLOAD_MB = 5
MAX_AUDIO_SECONDS = 240  # under the long/ clips (234 s and 255 s) only in part


@pytest.fixture(scope="session")
def whisper_server() -> Iterator[ServerProcess]:
    """The faster-whisper family on its embedded default (bundled tiny.en)."""
    with ServerProcess(
        "servers/faster_whisper.py",
        "--max-upload-mb",
        str(MAX_UPLOAD_MB),
        "--max-audio-seconds",
        str(MAX_AUDIO_SECONDS),
        name="faster-whisper",
    ) as server:
        yield server


@pytest.fixture(scope="session")
def multilingual_server() -> Iterator[ServerProcess]:
    """Whisper base, multilingual: language detection and translation."""
    with ServerProcess(
        "servers/faster_whisper.py",
        "--model",
        str(multilingual_whisper()),
        "--name",
        "whisper-base",
        "--beam-size",
        "1",
        name="whisper-base",
    ) as server:
        yield server


@pytest.fixture(scope="session")
def client(whisper_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=whisper_server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def multilingual_client(multilingual_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=multilingual_server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)
