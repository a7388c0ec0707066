"""The diarization family end to end: `servers/diarization.py` on real conversations, its 4xx answers, and
a router that loads and unloads it.

The corpus' five-speaker conversation (long/) must come out as five speakers whose turns agree with its
manifest; a conversation put together here from dev/ clips must name the voices enrolled from other
clips of the same speakers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from faster_whisper import decode_audio

from common.audio import SAMPLE_RATE
from common.speakers import NAMES, REFERENCES, Turn
from tests.helpers import (
    CORPUS,
    DIARIZER,
    FRAME,
    TINY_EN,
    ServerProcess,
    data_url,
    der,
    scored_frames,
    speaker_frames,
    wav,
    write_registry,
)

DEV = CORPUS / "dev" / "audio"
GAP = np.zeros(SAMPLE_RATE // 2, np.float32)
# A conversation of three voices taking turns (dev/ clips), and references from other clips of two of them.
TURNS = [
    ("p225_003", "Alice"),
    ("1089-134686-0000", "A"),
    ("p226_003", "Bob"),
    ("p225_008", "Alice"),
    ("p226_005", "Bob"),
    ("1089-134691-0001", "A"),
    ("p225_011", "Alice"),
    ("p226_008", "Bob"),
    ("1089-134686-0001", "A"),
]
ENROLLED = {"Alice": "p225_023", "Bob": "p226_021"}


def clip(name: str, seconds: float | None = None) -> np.ndarray:
    """A dev/ clip (its first `seconds`, if given)."""
    audio = decode_audio(str(DEV / f"{name}.flac"))
    return audio if seconds is None else audio[: int(seconds * SAMPLE_RATE)]


def conversation() -> tuple[bytes, list[Turn]]:
    """TURNS as one recording (half a second of silence between turns), and who speaks when in it."""
    pieces, truth, at = [], [], 0.0
    for name, speaker in TURNS:
        audio = clip(name)
        truth.append(Turn(at, at + audio.size / SAMPLE_RATE, speaker))
        pieces += [audio, GAP]
        at += (audio.size + GAP.size) / SAMPLE_RATE
    return wav(np.concatenate(pieces)), truth


def diarize(url: str, audio: bytes, **data: object) -> httpx.Response:
    files = {"file": ("audio.wav", audio, "audio/wav")}
    return httpx.post(f"{url}/v1/audio/diarizations", files=files, data={"model": "diarizer", **data}, timeout=120)


def turns_of(body: dict) -> list[Turn]:
    return [Turn.from_json(turn) for turn in body["turns"]]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # A long batch window, so that concurrent requests surely share a batch.
    with ServerProcess("servers/diarization.py", "--batch-timeout", "0.5", name="diarizer") as started:
        yield started


@pytest.fixture(scope="module")
def known() -> dict[str, list[str]]:
    return {
        NAMES: list(ENROLLED),
        REFERENCES: [data_url(clip(name)) for name in ENROLLED.values()],
    }


def test_five_speakers_in_the_dev_conversation(server: ServerProcess) -> None:
    entry = next(
        json.loads(line)
        for line in (CORPUS / "long" / "manifest.jsonl").read_text().splitlines()
        if "multispeaker" in line
    )
    truth = [Turn(s["start"], s["end"], s["speaker"]) for s in entry["segments"]]
    body = diarize(server.url, (CORPUS / "long" / entry["audio"]).read_bytes()).json()
    turns = turns_of(body)
    assert (body["object"], body["model"]) == ("diarization", "diarizer")
    assert body["duration"] == pytest.approx(entry["duration"], abs=0.01)
    assert body["speakers"] == ["A", "B", "C", "D", "E"]
    assert turns == sorted(turns, key=lambda turn: turn.start)
    assert all(turn.start < turn.end <= body["duration"] for turn in turns)
    assert [turn.speaker for turn in turns if turn.speaker not in body["speakers"]] == []
    assert der(truth, turns, body["duration"]) <= 0.15


def test_known_speakers_are_named_and_batches_change_nothing(server: ServerProcess, known: dict) -> None:
    audio, truth = conversation()
    alone = diarize(server.url, audio, **known).json()
    assert sorted(alone["speakers"]) == ["A", "Alice", "Bob"]
    count = round(alone["duration"] / FRAME) + 1
    names: dict[str, int] = {}
    expected, found = speaker_frames(truth, count, names), speaker_frames(turns_of(alone), count, names)
    scored = scored_frames(truth, count) & (expected >= 0)
    assert np.mean(found[scored] == expected[scored]) >= 0.9
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda _: diarize(server.url, audio, **known).json(), range(3)))
    assert together == [alone] * 3
    batches = {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in httpx.get(server.url + "/metrics").text.splitlines())
        if name.startswith("open_speech_batch_size_")
    }
    sizes = [batches[f'open_speech_batch_size_{what}{{model="diarizer"}}'] for what in ("sum", "count")]
    assert sizes[0] > sizes[1]  # requests shared a batch


def test_models_and_unknown_model(server: ServerProcess) -> None:
    (listed,) = httpx.get(server.url + "/v1/models").json()["data"]
    assert listed["id"] == "diarizer" and listed["family"] == "diarization"
    assert listed["capabilities"]["diarize"] and not listed["capabilities"]["transcribe"]
    response = diarize(server.url, wav(clip("p225_003")), model="whisper-1")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


NOT_AUDIO = "data:audio/wav;base64," + base64.b64encode(b"not audio" * 100).decode()


@pytest.mark.parametrize(
    ("names", "references", "param"),
    [
        (["Alice", "Bob"], [("p225_023",)], REFERENCES),
        (["A1", "A2", "A3", "A4", "A5"], [("p225_023",)] * 5, NAMES),
        (["Alice"], ["data:audio/wav,not base64"], REFERENCES),
        (["Alice"], [NOT_AUDIO], REFERENCES),
        (["Alice"], [("p225_023", 1.0)], REFERENCES),
        (["Alice"], [("p226_023",)], REFERENCES),  # 11 s
        (["Alice", "Alice"], [("p225_023",), ("p226_021",)], NAMES),
    ],
    ids=["counts differ", "five names", "not base64", "not audio", "1 s", "11 s", "same name twice"],
)
def test_bad_known_speakers_get_400(
    server: ServerProcess, names: list[str], references: list[str | tuple], param: str
) -> None:
    """Each reference a data URL as it is, or (a clip, and seconds of it if not all)."""
    urls = [ref if isinstance(ref, str) else data_url(clip(*ref)) for ref in references]
    response = diarize(server.url, wav(clip("p225_003")), **{NAMES: names, REFERENCES: urls})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


def test_undecodable_upload_gets_400(server: ServerProcess) -> None:
    response = diarize(server.url, b"not audio" * 100)
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


def test_the_router_loads_and_unloads_the_diarizer(tmp_path: Path) -> None:
    registry = write_registry(tmp_path, TINY_EN, DIARIZER, diarizer="diarizer")
    with ServerProcess("servers/router.py", "--registry", str(registry), name="router-diarizer") as router:
        listed = {m["id"]: m for m in httpx.get(router.url + "/v1/models").json()["data"]}
        assert listed["diarizer"]["capabilities"]["diarize"] and listed["tiny.en"]["capabilities"]["transcribe"]
        loaded = httpx.post(router.url + "/api/ps/diarizer", timeout=120)
        assert loaded.status_code == 200 and loaded.json()["family"] == "diarization", loaded.text
        running = {m["id"]: m for m in httpx.get(router.url + "/api/ps").json()["models"]}
        assert set(running) == {"tiny.en", "diarizer"} and running["diarizer"]["status"] == "ready"
        assert httpx.delete(router.url + "/api/ps/diarizer", timeout=60).json()["status"] == "unloaded"
        assert [m["id"] for m in httpx.get(router.url + "/api/ps").json()["models"]] == ["tiny.en"]
