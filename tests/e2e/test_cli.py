"""The `open-speech` command as installed (the console script beside the interpreter), against real routers.

Also the router's OpenAPI description of the audio form (/docs), and a request sent the way Swagger UI sends it.
Progress bars are drawn only on a terminal, so the tests that look for them give the command a pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import socket
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.formats import RESPONSE_FORMATS
from servers.faster_whisper import model_path
from tests.helpers import (
    DIARIZER,
    HUB_REPO,
    PULLED_TINY,
    TINY_EN,
    Clip,
    ServerProcess,
    corpus,
    free_port,
    hub_env,
    wer,
    write_registry,
)
from tests.hub_standin import HubStandin

CLI = Path(sys.executable).parent / "open-speech"
DEV = corpus("dev")


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A router on a two-model registry, its Hugging Face cache empty and its hub a local stand-in."""
    folder = tmp_path_factory.mktemp("cli-router")
    registry = write_registry(folder, TINY_EN, PULLED_TINY, DIARIZER, diarizer="diarizer")
    with HubStandin({HUB_REPO: model_path("bundled")}) as hub:
        hf = hub_env(folder, hub.url)
        with ServerProcess("servers/router.py", "--registry", str(registry), env=hf, name="router-cli") as server:
            yield server


def _environment() -> dict[str, str]:
    """This environment without OPEN_SPEECH_* settings, which the command would pick up."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OPEN_SPEECH_")}


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *map(str, args)], capture_output=True, text=True, env=_environment(), cwd=cwd, timeout=300
    )


def cli_on_terminal(*args: str | Path) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of the command with its stderr on a pseudo-terminal."""
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 rows, 120 columns
    process = subprocess.Popen(
        [str(CLI), *map(str, args)], stdout=subprocess.PIPE, stderr=terminal, env=_environment(), text=True
    )
    os.close(terminal)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the command and its children have closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = process.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(main)
    return process.returncode, stdout, b"".join(chunks).decode(errors="replace")


def direct(router: ServerProcess, path: Path, **fields: str | list[str]) -> httpx.Response:
    """The same request sent straight to the router."""
    with path.open("rb") as audio:
        return httpx.post(
            router.url + "/v1/audio/transcriptions",
            files={"file": (path.name, audio)},
            data={"model": "whisper-1", **fields},
            timeout=300,
        )


def expected_output(response: httpx.Response, response_format: str) -> str:
    if response_format in ("json", "verbose_json", "diarized_json"):
        return json.dumps(response.json(), indent=2, ensure_ascii=False) + "\n"
    return response.text if response.text.endswith("\n") else response.text + "\n"


@pytest.mark.parametrize("response_format", RESPONSE_FORMATS)
def test_every_response_format(router: ServerProcess, response_format: str) -> None:
    clip = DEV[0]
    done = cli("transcribe", clip.path, "--url", router.url, "--response-format", response_format)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected_output(direct(router, clip.path, response_format=response_format), response_format)
    assert done.stderr == ""  # no bar for one file, nothing started
    text = {
        "json": lambda: json.loads(done.stdout)["text"],
        "verbose_json": lambda: json.loads(done.stdout)["text"],
        "diarized_json": lambda: json.loads(done.stdout)["text"],
        "text": lambda: done.stdout,
        "srt": lambda: " ".join(done.stdout.split("\n")[2::4]),
        "vtt": lambda: " ".join(done.stdout.split("\n")[3::3]),
    }[response_format]()
    assert wer([clip.text], [text]) < 0.2, text


def test_word_timestamps_and_the_other_fields(router: ServerProcess) -> None:
    clip = DEV[1]
    options = ["--response-format", "verbose_json", "--timestamp-granularities", "word,segment"]
    options += ["--language", "en", "--temperature", "0", "--prompt", "A reading."]
    done = cli("transcribe", clip.path, "--url", router.url, *options)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["words"] and body["segments"] and body["language"] == "english"
    fields = {"response_format": "verbose_json", "language": "en", "temperature": "0.0", "prompt": "A reading."}
    assert body == direct(router, clip.path, **fields, **{"timestamp_granularities[]": ["word", "segment"]}).json()


def test_stream_prints_the_transcript(router: ServerProcess) -> None:
    clip = DEV[2]
    done = cli("transcribe", clip.path, "--url", router.url, "--stream")
    assert done.returncode == 0, done.stderr
    assert done.stdout == direct(router, clip.path).json()["text"] + "\n"


def test_several_files_into_an_output_dir_with_a_progress_bar(router: ServerProcess, tmp_path: Path) -> None:
    clips = DEV[3:6]
    status, stdout, stderr = cli_on_terminal(
        "transcribe",
        *(c.path for c in clips),
        "--url",
        router.url,
        "--response-format",
        "srt",
        "--output-dir",
        tmp_path,
    )
    assert status == 0, stderr
    assert stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{c.path.stem}.srt" for c in clips)
    for clip in clips:
        assert (tmp_path / f"{clip.path.stem}.srt").read_text() == direct(router, clip.path, response_format="srt").text
    assert "3/3" in stderr and "100%" in stderr, stderr


def test_a_bad_file_among_good_ones(router: ServerProcess, tmp_path: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_text("this is not audio\n" * 50)
    good: list[Clip] = DEV[6:8]
    done = cli("transcribe", good[0].path, bad, good[1].path, "--url", router.url)
    assert done.returncode == 1
    message = direct(router, bad).json()["error"]["message"]
    assert f"open-speech: {bad}: {message} (HTTP 400)" in done.stderr
    # The others are transcribed, each under its name.
    expected = "".join(f"==> {c.path} <==\n{direct(router, c.path, response_format='text').text}" for c in good)
    assert done.stdout == expected


@pytest.mark.parametrize(
    ("option", "fields"),
    [
        (["--model", "whisper-9"], {"model": "whisper-9"}),
        (["--language", "xx"], {"language": "xx"}),
    ],
)
def test_server_errors_print_the_message(router: ServerProcess, option: list[str], fields: dict[str, str]) -> None:
    done = cli("transcribe", DEV[0].path, "--url", router.url, *option)
    assert done.returncode == 1 and done.stdout == ""
    error = direct(router, DEV[0].path, **fields)
    assert done.stderr.strip().endswith(f"{error.json()['error']['message']} (HTTP {error.status_code})")


def test_translation_with_an_english_only_model_is_refused(router: ServerProcess) -> None:
    done = cli("transcribe", DEV[0].path, "--url", router.url, "--translate")
    assert done.returncode == 1
    assert "cannot translate" in done.stderr and "(HTTP 400)" in done.stderr, done.stderr


def test_missing_file_is_refused_before_any_request(router: ServerProcess, tmp_path: Path) -> None:
    done = cli("transcribe", DEV[0].path, tmp_path / "absent.flac", "--url", router.url)
    assert done.returncode == 1 and done.stdout == ""
    assert f"no such file: {tmp_path / 'absent.flac'}" in done.stderr


def test_ps_and_models(router: ServerProcess) -> None:
    done = cli("ps", "--url", router.url)
    assert done.returncode == 0, done.stderr
    loaded = httpx.get(router.url + "/api/ps").json()["models"]
    header, *rows = done.stdout.splitlines()
    assert header.split()[:3] == ["MODEL", "FAMILY", "DEVICE"]
    assert [row.split()[0] for row in rows] == [m["id"] for m in loaded]
    assert loaded[0]["id"] == "tiny.en" and {m["id"] for m in loaded} <= {"tiny.en", "diarizer"}  # diarized_json's
    assert str(loaded[0]["pid"]) in rows[0].split() and "MiB" in rows[0]
    as_json = json.loads(cli("ps", "--url", router.url, "--json").stdout)
    assert [(m["id"], m["pid"], m["port"]) for m in as_json["models"]] == [
        (m["id"], m["pid"], m["port"]) for m in loaded
    ]

    done = cli("models", "--url", router.url)
    assert done.returncode == 0, done.stderr
    listed = httpx.get(router.url + "/v1/models").json()["data"]
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["MODEL", "FAMILY", "ALIASES", "DOWNLOADED", "LOADED", "SOURCE"]
    table = {row.split()[0]: row.split() for row in rows}
    assert set(table) == {m["id"] for m in listed if m["root"] == m["id"]} == {"tiny.en", "pulled-tiny", "diarizer"}
    assert table["tiny.en"] == ["tiny.en", "faster-whisper", "whisper-1", "yes", "yes", "bundled"]
    assert json.loads(cli("models", "--url", router.url, "--json").stdout)["data"] == listed


def test_pull_with_a_progress_bar(router: ServerProcess) -> None:
    def downloaded() -> bool:
        return httpx.get(router.url + "/v1/models/pulled-tiny").json()["downloaded"]

    assert not downloaded()
    status, stdout, stderr = cli_on_terminal("pull", "pulled-tiny", "--url", router.url)
    assert status == 0, stderr
    assert stdout == "pulling manifest\nsuccess\n"
    assert "100%" in stderr and re.search(r"\d+(\.\d+)?M/\d+(\.\d+)?M", stderr), stderr
    assert downloaded()
    assert cli("pull", "pulled-tiny", "--url", router.url).stdout == "success\n"  # cached: at once

    missing = cli("pull", "nobody/nothing", "--url", router.url)
    assert missing.returncode == 1 and "not found" in missing.stderr and "(HTTP 404)" in missing.stderr


def test_starts_a_router_when_none_answers_and_stops_it_after(router: ServerProcess, tmp_path: Path) -> None:
    nothing = f"http://127.0.0.1:{free_port()}"
    assert cli("ps", "--url", nothing, "--no-start").stderr == f"open-speech: no server answers at {nothing}\n"

    clip = DEV[8]
    done = cli("transcribe", clip.path, "--url", nothing, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # The shipped configuration serves the same bundled tiny.en as the test router.
    assert done.stdout == direct(router, clip.path, response_format="text").text
    started = re.search(r"starting one at http://127\.0\.0\.1:(\d+) for this command", done.stderr)
    assert started, done.stderr
    with socket.socket() as s:  # stopped: nothing listens there any more
        assert s.connect_ex(("127.0.0.1", int(started.group(1)))) != 0


def test_docs_describe_the_audio_form(router: ServerProcess) -> None:
    schema = httpx.get(router.url + "/openapi.json").json()
    for path, fields in (
        ("/v1/audio/transcriptions", {"timestamp_granularities[]", "include[]", "keywords[]", "languages[]"}),
        ("/v1/audio/translations", set()),
    ):
        body = schema["paths"][path]["post"]["requestBody"]
        form = body["content"]["multipart/form-data"]
        properties = form["schema"]["properties"]
        assert {"file", "model", "language", "prompt", "response_format", "temperature", "stream"} | fields <= set(
            properties
        )
        assert form["schema"]["required"] == ["file", "model"] and body["required"]
        assert properties["file"] == {**properties["file"], "type": "string", "format": "binary"}
        assert properties["response_format"]["enum"] == list(RESPONSE_FORMATS)
        for name in fields:  # one part per item, as OpenAI's clients send them
            assert properties[name]["type"] == "array" and form["encoding"][name]["explode"] is True
    docs = httpx.get(router.url + "/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text


def test_a_request_as_swagger_ui_sends_it(router: ServerProcess) -> None:
    """Every field Swagger UI fills in, as text parts, the arrays exploded into one part per item."""
    clip = DEV[9]
    fields = {
        "model": "whisper-1",
        "language": "en",
        "response_format": "verbose_json",
        "temperature": "0",
        "timestamp_granularities[]": ["word", "segment"],  # one part each
        "stream": "false",
    }
    response = httpx.post(
        router.url + "/v1/audio/transcriptions",
        files={"file": (clip.path.name, clip.path.read_bytes(), "audio/flac")},
        data=fields,
        headers={"accept": "application/json, text/plain, text/event-stream"},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["words"] and body["segments"] and wer([clip.text], [body["text"]]) < 0.2
