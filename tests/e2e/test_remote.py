"""Models served by family servers the router does not start (registry `url`, as in Kubernetes).

A real faster-whisper server on the bundled tiny.en runs on its own; a router whose registry points
models at it by URL proxies to it, probes it, refuses to unload it and never stops it. A URL where
nothing listens and a server that serves another model give clear 503s.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml

from router.registry import REPO, ModelEntry, Registry
from tests.helpers import ServerProcess, corpus, free_port, stream_events

DEV = corpus("dev")


@pytest.fixture(scope="module")
def family() -> Iterator[ServerProcess]:
    """The external family server, started as a Kubernetes pod would run it."""
    with ServerProcess(
        "servers/faster_whisper.py", "--name", "remote-tiny", "--aliases", "remote-alias", name="external-whisper"
    ) as server:
        yield server


@pytest.fixture(scope="module")
def down_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, family: ServerProcess, down_url: str) -> Iterator[ServerProcess]:
    registry = tmp_path_factory.mktemp("remote") / "models.yaml"
    external = {"family": "faster-whisper", "source": "bundled", "languages": ["en"]}
    models = [
        {"id": "remote-tiny", "aliases": ["remote-alias"], "url": family.url + "/", **external},
        {"id": "remote-down", "url": down_url, **external},
        {"id": "remote-wrong", "url": family.url, **external},  # that server does not serve this id
    ]
    registry.write_text(yaml.safe_dump({"default": "remote-tiny", "models": models}))
    # keep_alive 1 s: short enough that an expiry of the external models would show.
    with ServerProcess("servers/router.py", "--registry", str(registry), "--keep-alive", "1", name="router-ext") as r:
        yield r


@pytest.fixture(scope="module")
def sdk(router: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def ps(router: ServerProcess) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(router.url + "/api/ps", timeout=30).json()["models"]}


def transcribe(base_url: str, model: str, path: Path) -> str:
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    with path.open("rb") as f:
        return client.audio.transcriptions.create(model=model, file=f).text


def test_the_router_starts_nothing_and_reports_each_external(router: ServerProcess, family: ServerProcess) -> None:
    assert psutil.Process(router.process.pid).children() == []
    health = httpx.get(router.url + "/health", timeout=30).json()
    assert health == {
        "status": "ok",
        "models": {"remote-tiny": "ready", "remote-down": "unreachable", "remote-wrong": "misconfigured"},
    }
    loaded = ps(router)
    assert set(loaded) == {"remote-tiny", "remote-down", "remote-wrong"}
    tiny = loaded["remote-tiny"]
    assert tiny["url"] == family.url and tiny["port"] == family.port and tiny["pid"] is None
    assert tiny["status"] == "ready" and tiny["expires_at"] is None and tiny["in_flight"] == 0
    assert tiny["device"] == "cpu"  # the external server's own effective config, read by the probe


def test_transcription_through_the_router_is_the_external_servers(router: ServerProcess, family: ServerProcess) -> None:
    for clip in DEV[:3]:
        direct = transcribe(family.url, "remote-tiny", clip.path)
        assert direct
        assert transcribe(router.url, "remote-tiny", clip.path) == direct
        assert transcribe(router.url, "remote-alias", clip.path) == direct


def test_streaming_through_the_router(router: ServerProcess) -> None:
    events = [e for _, e in stream_events(router, DEV[0].path, "remote-tiny")]
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert events[-1]["type"] == "transcript.text.done" and "".join(deltas) == events[-1]["text"]


def test_load_probes_and_unload_is_refused(router: ServerProcess, family: ServerProcess) -> None:
    loaded = httpx.post(router.url + "/api/ps/remote-alias", timeout=30)
    assert loaded.status_code == 200 and loaded.json()["url"] == family.url
    unload = httpx.delete(router.url + "/api/ps/remote-tiny", timeout=30)
    assert unload.status_code == 409
    error = unload.json()["error"]
    assert error["code"] == "model_managed_externally" and "managed externally" in error["message"]
    assert "remote-tiny" in ps(router)
    assert httpx.get(family.url + "/health").status_code == 200


def test_a_down_url_or_a_misnamed_server_gives_a_clear_503(router: ServerProcess, down_url: str) -> None:
    down = httpx.post(router.url + "/api/ps/remote-down", timeout=30)
    assert down.status_code == 503 and down.json()["error"]["code"] == "model_unavailable"
    assert down_url in down.json()["error"]["message"] and "cannot be reached" in down.json()["error"]["message"]
    wrong = httpx.post(router.url + "/api/ps/remote-wrong", timeout=30)
    assert wrong.status_code == 503 and "--name remote-wrong" in wrong.json()["error"]["message"]

    with pytest.raises(openai.APIStatusError) as refused:
        transcribe(router.url, "remote-down", DEV[0].path)
    assert refused.value.status_code == 503
    message = refused.value.response.json()["error"]["message"]
    assert down_url in message and refused.value.response.headers["retry-after"]
    assert transcribe(router.url, "remote-tiny", DEV[0].path)  # the router is unaffected


def test_external_models_never_expire(router: ServerProcess) -> None:
    time.sleep(3)  # keep_alive is 1 s and the idle sweep runs every 0.5 s: several sweeps pass
    assert set(ps(router)) == {"remote-tiny", "remote-down", "remote-wrong"}


def test_stopping_the_router_leaves_the_external_server_running(router: ServerProcess, family: ServerProcess) -> None:
    router.stop(timeout=60)
    assert httpx.get(family.url + "/health").status_code == 200
    assert transcribe(family.url, "remote-tiny", DEV[1].path)


def test_registry_refuses_a_url_that_is_not_http(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    entry = {"id": "m", "family": "faster-whisper", "source": "bundled", "url": "whisper-small.open-speech:8000"}
    path.write_text(yaml.safe_dump({"default": "m", "models": [entry]}))
    with pytest.raises(ValueError, match="expected http://host:port"):
        Registry.load(path)


def test_every_registry_key_is_documented() -> None:
    header = (REPO / "configs" / "models.yaml").read_text().partition("\ndefault:")[0]
    for key in ModelEntry.__dataclass_fields__:
        assert re.search(rf"^#   {key} ", header, re.MULTILINE), f"{key} is not described in configs/models.yaml"
