"""The router: routing by model name, model lifecycle, crash recovery, streaming, auth and pull.

Real processes on 127.0.0.1: the router starts real family servers; clients are the `openai` SDK and
httpx. Two models are served side by side: the bundled tiny.en under two ids with different settings.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from faster_whisper import WhisperModel, decode_audio

from servers.faster_whisper import FALLBACK_TEMPERATURES, model_path
from tests.helpers import (
    HUB_REPO,
    PULLED_TINY,
    TINY_EN,
    Clip,
    ServerProcess,
    corpus,
    hub_env,
    stream_events,
    write_registry,
)
from tests.hub_standin import HubStandin

DEV = corpus("dev")
LONG = min(corpus("long"), key=lambda c: c.duration)

MODELS = (
    TINY_EN,
    {
        "id": "tiny-greedy",
        "family": "faster-whisper",
        "source": "bundled",
        "aliases": ["fast"],
        "languages": ["en"],
        "options": {"beam_size": 1, "max_batch_size": 4},
    },
    {"id": "tiny-unavailable", "family": "onnx", "source": "nobody/not-here"},
    PULLED_TINY,
)


@cache
def inprocess() -> WhisperModel:
    return WhisperModel(model_path("bundled"), device="cpu", compute_type="int8")


def inprocess_text(clip: Clip, beam_size: int) -> str:
    segments, _ = inprocess().transcribe(
        decode_audio(str(clip.path)), beam_size=beam_size, temperature=FALLBACK_TEMPERATURES
    )
    return "".join(s.text for s in segments).strip()


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStandin]:
    """A stand-in for the Hugging Face Hub on 127.0.0.1, serving the bundled tiny.en as a hub repository."""
    with HubStandin({HUB_REPO: model_path("bundled")}) as standin:
        yield standin


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, hub: HubStandin) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("router")
    registry = write_registry(folder, *MODELS)
    hf = hub_env(folder, hub.url)
    server = ServerProcess(
        "servers/router.py", "--registry", str(registry), "--keep-alive", "-1", env=hf, name="router"
    )
    try:
        yield server.wait_healthy()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sdk(router: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def ps(router: ServerProcess) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(router.url + "/api/ps").json()["models"]}


def transcribe(sdk: openai.OpenAI, model: str, clip: Clip) -> str:
    with clip.path.open("rb") as f:
        return sdk.audio.transcriptions.create(model=model, file=f).text


def test_default_model_is_loaded_at_start(router: ServerProcess) -> None:
    assert list(ps(router)) == ["tiny.en"]
    health = httpx.get(router.url + "/health").json()
    assert health == {"status": "ok", "models": {"tiny.en": "ready"}}


def test_routing_by_name_and_alias_to_models_with_their_own_settings(router: ServerProcess, sdk: openai.OpenAI) -> None:
    clip = DEV[5]
    beam5, greedy = inprocess_text(clip, 5), inprocess_text(clip, 1)
    assert transcribe(sdk, "tiny.en", clip) == transcribe(sdk, "whisper-1", clip) == beam5
    assert transcribe(sdk, "tiny-greedy", clip) == transcribe(sdk, "fast", clip) == greedy  # loaded on first use
    loaded = ps(router)
    assert set(loaded) == {"tiny.en", "tiny-greedy"}
    assert loaded["tiny.en"]["pid"] != loaded["tiny-greedy"]["pid"]
    assert loaded["tiny-greedy"]["memory"] > 50_000_000 and loaded["tiny-greedy"]["device"] == "cpu"
    config = httpx.get(router.url + "/v1/models/fast").json()["config"]
    assert (config["beam_size"], config["max_batch_size"]) == (1, 4)
    assert not {"api_key", "diarizer_key"} & set(config), "the family server's key and the router's stay secret"


def test_models_list(sdk: openai.OpenAI) -> None:
    models = {m.id: m.model_dump() for m in sdk.models.list()}
    assert set(models) == {"tiny.en", "whisper-1", "tiny-greedy", "fast", "tiny-unavailable", "pulled-tiny"}
    assert (models["fast"]["root"], models["whisper-1"]["root"], models["tiny.en"]["root"]) == (
        "tiny-greedy",
        "tiny.en",
        "tiny.en",
    )
    tiny = models["tiny.en"]
    assert tiny["object"] == "model" and tiny["owned_by"] and tiny["created"]
    assert tiny["family"] == "faster-whisper" and tiny["aliases"] == ["whisper-1"]
    assert tiny["loaded"] is True and tiny["downloaded"] is True and tiny["languages"] == ["en"]
    assert tiny["capabilities"] == {
        "translate": False,
        "stream": True,
        "word_timestamps": True,
        "transcribe": True,
        "diarize": False,
    }
    assert models["tiny-unavailable"]["loaded"] is False


def test_unknown_missing_and_unavailable_models(router: ServerProcess) -> None:
    audio = {"file": ("a.flac", DEV[0].path.read_bytes(), "audio/flac")}
    url = router.url + "/v1/audio/transcriptions"
    unknown = httpx.post(url, files=audio, data={"model": "whisper-9"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    missing = httpx.post(url, files=audio, data={})
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "model"
    # Its weights are nowhere (no such repo, no hub): the family server exits while loading.
    unavailable = httpx.post(router.url + "/api/ps/tiny-unavailable", timeout=120)
    assert unavailable.status_code == 500 and unavailable.json()["error"]["code"] == "model_load_failed"
    assert "tiny-unavailable" in unavailable.json()["error"]["message"]
    assert "tiny-unavailable" not in ps(router)
    assert httpx.post(url, files=audio, data={"model": "whisper-1"}).json()["text"]


def test_load_unload_and_load_on_request(router: ServerProcess, sdk: openai.OpenAI) -> None:
    loaded = httpx.post(router.url + "/api/ps/tiny-greedy", timeout=120)
    assert loaded.status_code == 200
    pid = loaded.json()["pid"]
    unloaded = httpx.delete(router.url + "/api/ps/fast", timeout=120)
    assert unloaded.json() == {"id": "tiny-greedy", "status": "unloaded"}
    assert "tiny-greedy" not in ps(router) and not psutil.pid_exists(pid)
    assert httpx.delete(router.url + "/api/ps/tiny-greedy").status_code == 404
    assert transcribe(sdk, "fast", DEV[1]) == inprocess_text(DEV[1], 1)  # loads it again
    assert ps(router)["tiny-greedy"]["pid"] != pid


def test_a_second_load_while_loading_gets_409(router: ServerProcess) -> None:
    httpx.delete(router.url + "/api/ps/tiny-greedy", timeout=120)
    first: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: first.setdefault("r", httpx.post(router.url + "/api/ps/tiny-greedy", timeout=120))
    )
    thread.start()
    deadline = time.monotonic() + 10
    while httpx.get(router.url + "/health").json()["models"].get("tiny-greedy") != "loading":
        assert time.monotonic() < deadline, "the load never showed as loading"
        time.sleep(0.05)
    second = httpx.post(router.url + "/api/ps/tiny-greedy", timeout=120)
    thread.join()
    assert second.status_code == 409 and second.json()["error"]["code"] == "model_loading"
    assert first["r"].status_code == 200


def test_unload_waits_for_in_flight_requests(router: ServerProcess, sdk: openai.OpenAI) -> None:
    httpx.post(router.url + "/api/ps/tiny-greedy", timeout=120)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(transcribe, sdk, "tiny-greedy", LONG)
        _wait_in_flight(router, "tiny-greedy")
        assert httpx.delete(router.url + "/api/ps/tiny-greedy", timeout=300).status_code == 200
        assert len(running.result().split()) > 100  # finished, not cut off


def test_concurrent_requests_across_both_models(router: ServerProcess, sdk: openai.OpenAI) -> None:
    jobs = [(("tiny.en", 5) if i % 2 else ("tiny-greedy", 1), clip) for i, clip in enumerate(DEV[10:26])]
    expected = [inprocess_text(clip, beam) for (_, beam), clip in jobs]
    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda job: transcribe(sdk, job[0][0], job[1]), jobs))
    assert texts == expected


def test_stream_through_the_router_arrives_before_the_end(router: ServerProcess) -> None:
    arrivals = stream_events(router, LONG.path, "whisper-1")
    deltas = [(t, e) for t, e in arrivals if e["type"] == "transcript.text.delta"]
    done_at, done = arrivals[-1]
    assert done["type"] == "transcript.text.done" and len(deltas) > 10
    assert "".join(e["delta"] for _, e in deltas) == done["text"]
    # Relayed as produced: the first delta reached the client long before the transcript was done.
    assert deltas[0][0] < done_at / 2


def test_a_client_that_leaves_stops_its_job_at_the_family_server(router: ServerProcess) -> None:
    """The router's handler is cancelled when its client goes; it drops its request upstream, and the
    family server stops the job (its log, which the router's carries, says so)."""
    stopped = "job stopped: its client left"
    before = router.log_path.read_text(errors="replace").count(stopped)
    stream_events(router, LONG.path, "whisper-1", leave=True)
    deadline = time.monotonic() + 60
    while router.log_path.read_text(errors="replace").count(stopped) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert router.log_path.read_text(errors="replace").count(stopped) == before + 1
    assert ps(router)["tiny.en"]["in_flight"] == 0


def test_crash_mid_request_gets_503_and_the_next_request_restarts_the_model(
    router: ServerProcess, sdk: openai.OpenAI
) -> None:
    httpx.post(router.url + "/api/ps/tiny-greedy", timeout=120)
    pid = ps(router)["tiny-greedy"]["pid"]
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(
            lambda: httpx.post(
                router.url + "/v1/audio/transcriptions",
                timeout=300,
                files={"file": LONG.path.read_bytes()},
                data={"model": "tiny-greedy"},
            )
        )
        _wait_in_flight(router, "tiny-greedy")
        os.kill(pid, signal.SIGKILL)
        response = running.result()
    assert response.status_code == 503
    assert "stopped unexpectedly" in response.json()["error"]["message"]
    assert transcribe(sdk, "whisper-1", DEV[2]) == inprocess_text(DEV[2], 5)  # the other model is unaffected
    assert transcribe(sdk, "tiny-greedy", DEV[3]) == inprocess_text(DEV[3], 1)  # restarted
    assert ps(router)["tiny-greedy"]["pid"] != pid


def _wait_in_flight(router: ServerProcess, model: str) -> None:
    deadline = time.monotonic() + 30
    while ps(router).get(model, {}).get("in_flight", 0) < 1:
        assert time.monotonic() < deadline, "request never reached the model"
        time.sleep(0.05)
    time.sleep(0.5)  # inside the family server by now


def test_second_router_with_keep_alive_api_key_cors_and_load_on_request_reject(tmp_path: Path) -> None:
    registry = write_registry(tmp_path, *MODELS)
    options = ["--keep-alive", "3", "--load-on-request", "reject", "--cors-origins", "http://app.example"]
    with ServerProcess(
        "servers/router.py",
        "--registry",
        str(registry),
        *options,
        env={"OPEN_SPEECH_API_KEY": "sk-test"},
        name="router-ttl",
    ) as server:
        auth = {"Authorization": "Bearer sk-test"}

        def loaded() -> list[str]:
            return [m["id"] for m in httpx.get(server.url + "/api/ps", headers=auth).json()["models"]]

        # API key: every route but /health.
        assert httpx.get(server.url + "/health").status_code == 200
        refused = httpx.get(server.url + "/v1/models")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(server.url + "/api/ps", headers={"Authorization": "Bearer wrong"}).status_code == 401
        # CORS for the configured origin; a request id on every response, the client's when it sends one.
        preflight = httpx.options(
            server.url + "/v1/audio/transcriptions",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        assert len(httpx.get(server.url + "/v1/models", headers=auth).headers["x-request-id"]) >= 8
        echoed = httpx.get(server.url + "/v1/models", headers={**auth, "X-Request-ID": "client-42"})
        assert echoed.headers["x-request-id"] == "client-42"

        # load_on_request=reject: 503 with Retry-After while the model loads in the background.
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0)
        with pytest.raises(openai.APIStatusError) as error:
            transcribe(client, "fast", DEV[0])
        assert error.value.status_code == 503 and error.value.response.headers["retry-after"]
        deadline = time.monotonic() + 60
        while "tiny-greedy" not in loaded():
            assert time.monotonic() < deadline, "the background load never finished"
            time.sleep(0.2)
        assert transcribe(client, "fast", DEV[0]) == inprocess_text(DEV[0], 1)

        # keep_alive: the idle model unloads, the default stays.
        expiry = {m["id"]: m["expires_at"] for m in httpx.get(server.url + "/api/ps", headers=auth).json()["models"]}
        assert expiry["tiny.en"] is None and expiry["tiny-greedy"] is not None
        deadline = time.monotonic() + 30
        while "tiny-greedy" in loaded():
            assert time.monotonic() < deadline, "idle model never unloaded"
            time.sleep(0.5)
        assert loaded() == ["tiny.en"]


def test_sigterm_stops_the_router_and_every_model_server(tmp_path: Path) -> None:
    registry = write_registry(tmp_path, *MODELS)
    server = ServerProcess("servers/router.py", "--registry", str(registry), name="router-stop").wait_healthy()
    httpx.post(server.url + "/api/ps/tiny-greedy", timeout=120)
    children = [psutil.Process(m["pid"]) for m in httpx.get(server.url + "/api/ps").json()["models"]]
    family = [p for child in children for p in [child, *child.children(recursive=True)]]
    ports = [server.port, *(m["port"] for m in httpx.get(server.url + "/api/ps").json()["models"])]
    assert len(children) == 2 and len(family) > 2
    # uvicorn shuts down gracefully, then re-raises the signal: ending by SIGTERM is a clean exit here.
    assert server.stop(timeout=60) in (0, -signal.SIGTERM)
    assert "Finished server process" in server.log()
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"left running: {alive}"
    for port in ports:
        with socket.socket() as s:  # no listener keeps the port (TIME_WAIT connections may remain)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


def test_pull_with_progress_then_load_and_transcribe_with_the_pulled_copy(
    router: ServerProcess, sdk: openai.OpenAI
) -> None:
    def pull(model: str) -> tuple[int, list[dict]]:
        response = httpx.post(f"{router.url}/api/pull/{model}", timeout=300)
        return response.status_code, [json.loads(line) for line in response.text.splitlines()]

    assert sdk.models.retrieve("pulled-tiny").model_dump()["downloaded"] is False
    status, events = pull("pulled-tiny")
    assert status == 200 and events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    progress = [e for e in events if "completed" in e]
    assert progress and all(e["status"].startswith("downloading ") for e in progress)
    completed = [e["completed"] for e in progress]
    assert completed == sorted(completed) and completed[-1] == progress[0]["total"] > 70_000_000
    assert sdk.models.retrieve("pulled-tiny").model_dump()["downloaded"] is True
    assert pull("pulled-tiny") == (200, [{"status": "success"}])  # cached: at once

    assert httpx.post(router.url + "/api/ps/pulled-tiny", timeout=120).status_code == 200
    assert transcribe(sdk, "pulled-tiny", DEV[4]) == inprocess_text(DEV[4], 5)


@pytest.mark.parametrize(("model", "status"), [("a/b/c", 400), ("evil..repo/x", 400), ("nobody/nothing", 404)])
def test_pull_refuses_bad_or_unknown_ids(router: ServerProcess, model: str, status: int) -> None:
    response = httpx.post(f"{router.url}/api/pull/{model}", timeout=60)
    assert response.status_code == status and response.json()["error"]["param"] == "model"
