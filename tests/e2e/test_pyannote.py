"""The diarization family's pyannote backend end to end, on a tiny random-weight stand-in of
pyannote/speaker-diarization-community-1 (tests/pyannote_models.py): a router pulls it from a hub stand-in that
wants a token, as the gated repository does, loads it beside tiny.en, and diarizes a corpus clip with it.

The stand-in's speakers mean nothing: these tests check what the server makes of the pipeline's answer (turns
in order, inside the audio, never overlapping, speakers lettered or named), not who speaks.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from faster_whisper import decode_audio

from common.speakers import NAMES, REFERENCES, Turn, speakers
from tests import pyannote_models
from tests.helpers import TINY_EN, ServerProcess, corpus, data_url, hub_env, write_registry
from tests.hub_standin import HubStandin

if importlib.util.find_spec("pyannote") is None:  # not imported here: its import alone takes seconds
    pytest.skip("pyannote.audio is not installed (bash .ci/setup.sh pyannote)", allow_module_level=True)

TOKEN = "hf_test_token"
PYANNOTE = {"id": "pyannote", "family": "diarization", "source": pyannote_models.REPO_ID}
DEV = {clip.id: clip for clip in corpus("dev")}
CLIP = DEV["1089-134686-0000"]  # 10.4 s: two of the segmentation's 10 s chunks


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A router on tiny.en and the stand-in, its Hugging Face cache empty, its hub a stand-in that answers
    401 to a request without HF_TOKEN; the stand-in pulled."""
    folder = tmp_path_factory.mktemp("pyannote")
    repo = pyannote_models.build(folder / "repo")
    registry = write_registry(folder, TINY_EN, PYANNOTE)
    with HubStandin({pyannote_models.REPO_ID: repo}, token=TOKEN) as hub:
        env = hub_env(folder, hub.url) | {"HF_TOKEN": TOKEN}
        with ServerProcess("servers/router.py", "--registry", str(registry), env=env, name="router-pyannote") as server:
            pulled = httpx.post(server.url + "/api/pull/pyannote", timeout=120)
            events = [json.loads(line) for line in pulled.text.splitlines()]
            assert pulled.status_code == 200 and events[-1] == {"status": "success"}, pulled.text
            yield server


def diarize(router: ServerProcess, path: Path, **data: object) -> dict:
    with path.open("rb") as audio:
        response = httpx.post(
            router.url + "/v1/audio/diarizations",
            files={"file": audio},
            data={"model": "pyannote", **data},
            timeout=120,
        )
    assert response.status_code == 200, response.text
    return response.json()


def turns_of(body: dict) -> list[Turn]:
    """The answer's turns, checked: in order, inside the audio, one speaker at a time, speakers as listed."""
    turns = [Turn.from_json(turn) for turn in body["turns"]]
    assert turns and all(0 <= turn.start < turn.end <= body["duration"] for turn in turns)
    assert all(a.end <= b.start for a, b in itertools.pairwise(turns))
    assert body["speakers"] == speakers(turns)
    return turns


def test_the_pulled_pipeline_diarizes(router: ServerProcess) -> None:
    body = diarize(router, CLIP.path)
    assert (body["object"], body["model"]) == ("diarization", "pyannote")
    assert body["duration"] == pytest.approx(CLIP.duration, abs=0.01)
    turns_of(body)
    assert body["speakers"] == ["A"]  # random embeddings are all alike: one voice
    loaded = {m["id"]: m for m in httpx.get(router.url + "/api/ps").json()["models"]}
    assert set(loaded) == {"tiny.en", "pyannote"}
    assert (loaded["pyannote"]["family"], loaded["pyannote"]["status"]) == ("diarization", "ready")


def test_known_speakers_are_embedded_by_the_pipeline(router: ServerProcess) -> None:
    """A reference is embedded by the pipeline's own embedding model and matched to its speakers' centroids:
    with random weights every embedding is like every other, so the one voice takes the name."""
    reference = data_url(decode_audio(str(DEV["1089-134686-0001"].path)))
    body = diarize(router, CLIP.path, **{NAMES: ["Agnes"], REFERENCES: [reference]})
    assert {turn.speaker for turn in turns_of(body)} == {"Agnes"}
