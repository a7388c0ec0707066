"""`/metrics`: scraped with httpx after real requests, parsed with prometheus_client's own parser.

A faster-whisper server alone, and the router in front of the family server it starts: both are
multi-process (LitServe API process and workers), so each figure checked here was written by one
process and read back by another.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.helpers import TINY_EN, Clip, ServerProcess, corpus, write_registry

SHORT, SHORTER = corpus("dev")[1:3]  # 3.3 s and 2.1 s
TRANSCRIPTIONS = "/v1/audio/transcriptions"


def scrape(url: str, **kwargs: object) -> list[Sample]:
    response = httpx.get(url + "/metrics", timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry `labels`; the series must exist."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert found, f"no sample {name}{labels}"
    return sum(found)


def names(samples: list[Sample]) -> set[str]:
    return {s.name for s in samples}


def send_requests(client: openai.OpenAI) -> None:
    """A json transcription, a streamed one (by the alias) and a bad request (400)."""
    with SHORT.path.open("rb") as f:
        assert client.audio.transcriptions.create(model="tiny.en", file=f).text
    with SHORTER.path.open("rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    assert events[-1].type == "transcript.text.done"
    with SHORT.path.open("rb") as f, pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="tiny.en", file=f, response_format="bogus")  # type: ignore[arg-type]


def sdk(server: ServerProcess, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def assert_family_metrics(samples: list[Sample], clips: list[Clip]) -> None:
    """What a family server records for `send_requests`: by the served id, whatever name was asked for."""
    model = {"model": "tiny.en"}
    route = {**model, "route": TRANSCRIPTIONS}
    assert value(samples, "open_speech_requests_total", **route, status="200") == 2
    assert value(samples, "open_speech_requests_total", **route, status="400") == 1
    assert value(samples, "open_speech_request_duration_seconds_count", **route) == 3
    assert value(samples, "open_speech_request_duration_seconds_bucket", **route, le="+Inf") == 3
    # Only the two good requests reach the model: their audio, one batch entry and one RTF each.
    seconds = value(samples, "open_speech_audio_seconds_total", **model, task="transcribe")
    assert seconds == pytest.approx(sum(c.duration for c in clips), abs=0.05)
    assert value(samples, "open_speech_batch_size_sum", **model) == 2
    assert 1 <= value(samples, "open_speech_batch_size_count", **model) <= 2
    assert value(samples, "open_speech_inference_seconds_count", **model) == value(
        samples, "open_speech_batch_size_count", **model
    )
    assert value(samples, "open_speech_real_time_factor_count", **model) == 2
    assert value(samples, "open_speech_real_time_factor_sum", **model) > 0
    assert value(samples, "open_speech_queue_depth", **model) == 0  # every answer is complete


# ---- a family server alone ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metrics")


@pytest.fixture(scope="module")
def family(metrics_dir: Path) -> Iterator[ServerProcess]:
    """A faster-whisper server with a user-set PROMETHEUS_MULTIPROC_DIR (to look at its files)."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with ServerProcess("servers/faster_whisper.py", env=env, name="metrics-family") as server:
        send_requests(sdk(server))
        yield server


def test_family_server_counts_requests_audio_batches_and_rtf(family: ServerProcess) -> None:
    samples = scrape(family.url)
    assert_family_metrics(samples, [SHORT, SHORTER])
    assert not {n for n in names(samples) if n.startswith(("open_speech_router", "open_speech_loaded"))}


def test_family_server_writes_a_fresh_directory_from_its_processes(family: ServerProcess, metrics_dir: Path) -> None:
    (own,) = metrics_dir.iterdir()  # a fresh directory of its own below the user's
    assert own.name.startswith("faster-whisper-")
    pids = {int(re.search(r"_(\d+)\.db$", f.name)[1]) for f in own.glob("*.db")}  # type: ignore[index]
    family_pids = {family.process.pid, *(p.pid for p in psutil.Process(family.process.pid).children(recursive=True))}
    assert len(pids) >= 2 and pids <= family_pids  # the API process and the worker, at least


def test_scrapes_are_not_counted_and_other_routes_are(family: ServerProcess) -> None:
    assert httpx.get(family.url + "/v1/models").status_code == 200
    samples = scrape(family.url)
    assert value(samples, "open_speech_requests_total", route="/v1/models", status="200") == 1
    assert not [s for s in samples if s.labels.get("route") == "/metrics"]


# ---- the router -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def router_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("router-metrics")


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, router_dir: Path) -> Iterator[ServerProcess]:
    registry = write_registry(tmp_path_factory.mktemp("registry"), TINY_EN)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(router_dir)}
    args = ("--registry", str(registry), "--keep-alive", "-1")
    with ServerProcess("servers/router.py", *args, env=env, name="metrics-router") as server:
        send_requests(sdk(server))
        yield server


def family_server(router: ServerProcess) -> dict:
    (model,) = httpx.get(router.url + "/api/ps").json()["models"]
    return model


def test_router_shows_its_own_metrics_and_its_family_servers(router: ServerProcess) -> None:
    samples = scrape(router.url)
    route = {"model": "tiny.en", "route": TRANSCRIPTIONS}
    assert value(samples, "open_speech_router_requests_total", **route, status="200") == 2
    assert value(samples, "open_speech_router_requests_total", **route, status="400") == 1
    assert value(samples, "open_speech_router_request_duration_seconds_count", **route) == 3
    assert_family_metrics(samples, [SHORT, SHORTER])  # recorded by the family server's processes
    loaded = {"model": "tiny.en", "family": "faster-whisper", "state": "ready"}
    assert value(samples, "open_speech_loaded_models", **loaded) == 1
    assert value(samples, "open_speech_router_in_flight", model="tiny.en") == 0


def test_family_server_behind_the_router_shows_only_itself(router: ServerProcess) -> None:
    served = family_server(router)
    # Only the router knows the key it gave its family server; so does that server's own environment.
    key = psutil.Process(served["pid"]).environ()["OPEN_SPEECH_API_KEY"]
    samples = scrape(f"http://127.0.0.1:{served['port']}", headers={"Authorization": f"Bearer {key}"})
    assert_family_metrics(samples, [SHORT, SHORTER])
    assert "open_speech_router_requests_total" not in names(samples)


def test_unknown_model_is_counted_without_a_model_label(router: ServerProcess) -> None:
    with SHORTER.path.open("rb") as f, pytest.raises(openai.NotFoundError):
        sdk(router).audio.transcriptions.create(model="no-such-model", file=f)
    samples = scrape(router.url)
    assert value(samples, "open_speech_router_requests_total", model="", route=TRANSCRIPTIONS, status="404") == 1


def test_a_killed_family_server_leaves_its_totals_but_not_its_live_gauges(
    router: ServerProcess, router_dir: Path
) -> None:
    """Runs last in this module: it kills the router's family server (the next request would restart it)."""
    pid = family_server(router)["pid"]
    family_pids = {pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))}
    live_gauges = list(router_dir.rglob("gauge_live*.db"))
    assert {_pid(f) for f in live_gauges} & family_pids  # the API process's queue-depth gauge
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while httpx.get(router.url + "/api/ps").json()["models"] and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in family_pids:  # the router kills what is left of the server's process group
        while psutil.pid_exists(p) and time.monotonic() < deadline:
            time.sleep(0.2)
    samples = scrape(router.url)
    assert not {_pid(f) for f in router_dir.rglob("gauge_live*.db")} & family_pids
    totals = value(samples, "open_speech_requests_total", model="tiny.en", route=TRANSCRIPTIONS, status="200")
    assert totals == 2  # kept
    assert "open_speech_loaded_models" not in names(samples)


def _pid(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


# ---- a router with an API key, and its own temporary directory -------------------------------------------
def test_metrics_need_the_api_key_and_the_directory_goes_with_the_router(tmp_path: Path) -> None:
    env = {"OPEN_SPEECH_API_KEY": "sk-metrics", "TMPDIR": str(tmp_path)}
    with ServerProcess("servers/router.py", "--preload-default", "false", env=env, name="metrics-key") as router:
        assert httpx.get(router.url + "/metrics").status_code == 401
        assert httpx.get(router.url + "/v1/models").status_code == 401
        samples = scrape(router.url, headers={"Authorization": "Bearer sk-metrics"})
        # Refused before routing, still counted by its route.
        assert value(samples, "open_speech_router_requests_total", route="/v1/models", status="401") == 1
        assert len(list(tmp_path.glob("open-speech-metrics-router-*"))) == 1
    assert not list(tmp_path.glob("open-speech-metrics-*"))
