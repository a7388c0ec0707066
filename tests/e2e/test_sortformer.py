"""NeMo's Sortformer diarizer served by the NeMo family (`servers/nemo.py`), on tiny random-weight models
(tests/nemo_models.py): the diarization route and its answer, batching, known speakers, the router.

Random weights hear random speakers: the turns are checked against NeMo's own `diarize()` of the same model,
and the naming of known speakers against real voices (which the bundled diarizer's encoder tells apart).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import httpx
import pytest
from faster_whisper import decode_audio

from common.speakers import NAMES, REFERENCES, Turn, letters
from tests.helpers import CACHE, CORPUS, TINY_EN, ServerProcess, corpus, write_registry

nemo_models = pytest.importorskip("tests.nemo_models")

DEV = corpus("dev")
CLIPS = [c for c in DEV if c.id.startswith("1089")][:3]
VOICES = CORPUS / "dev" / "audio"


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    folder = CACHE / "nemo"
    return {
        "offline": nemo_models.build_sortformer(folder),
        "streaming": nemo_models.build_streaming_sortformer(folder),
    }


@dataclass
class Servers:
    server: ServerProcess  # servers/nemo.py on the tiny Sortformer
    router: ServerProcess  # a router whose registry lists it as a diarizer
    loading: Future[httpx.Response]  # the router's POST /api/ps of it


@pytest.fixture(scope="module")
def servers(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The Sortformer server and a router started together, the router asked to load the model as soon as it
    is up: each NeMo server takes half a minute to start on 2 cores, and these overlap."""
    entry = {"id": "tiny-sortformer", "family": "nemo", "source": str(models["offline"]), "diarizes": True}
    registry = write_registry(tmp_path_factory.mktemp("sortformer"), TINY_EN, entry, diarizer="tiny-sortformer")
    # A long batch window, so that concurrent requests surely share a batch.
    options = ("--name", "tiny-sortformer", "--batch-timeout", "0.5")
    with (
        ServerProcess("servers/nemo.py", "--model", str(models["offline"]), *options, name="sortformer") as server,
        ServerProcess("servers/router.py", "--registry", str(registry), name="router-sortformer") as router,
        ThreadPoolExecutor(1) as pool,
    ):
        loading = pool.submit(httpx.post, router.url + "/api/ps/tiny-sortformer", timeout=300)
        yield Servers(server, router, loading)


def diarize(url: str, path: Path, model: str = "tiny-sortformer", **data: object) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(f"{url}/v1/audio/diarizations", files={"file": f}, data={"model": model, **data}, timeout=120)


def nemo_turns(model: object, path: Path) -> list[tuple[float, float, str]]:
    """NeMo's `diarize()` of one recording: (start, end, speaker index), in the server's order, ends clamped
    to the audio as the server clamps them."""
    audio = decode_audio(str(path))
    (lines,) = model.diarize(audio=[audio], sample_rate=16_000, batch_size=1, verbose=False)
    spans = sorted((float(start), float(end), speaker) for start, end, speaker in (line.split() for line in lines))
    duration = len(audio) / 16_000
    return [(start, round(min(end, duration), 3), speaker) for start, end, speaker in spans if start < duration]


def same_turns(turns: list[Turn], expected: list[tuple[float, float, str]]) -> bool:
    """Whether `turns` are `expected`, their speakers lettered in order of first appearance."""
    order = list(dict.fromkeys(speaker for _, _, speaker in expected))
    label = dict(zip(order, islice(letters(), len(order)), strict=True))
    return [(round(t.start, 3), round(t.end, 3), t.speaker) for t in turns] == [
        (start, end, label[speaker]) for start, end, speaker in expected
    ]


def turns_of(body: dict) -> list[Turn]:
    return [Turn.from_json(turn) for turn in body["turns"]]


def test_turns_are_nemo_diarize_in_order_and_lettered(servers: Servers, models: dict[str, Path]) -> None:
    from nemo.collections.asr.models import SortformerEncLabelModel

    server = servers.server
    model = SortformerEncLabelModel.restore_from(str(models["offline"]), map_location="cpu").eval()
    alone = [diarize(server.url, clip.path) for clip in CLIPS]
    with ThreadPoolExecutor(len(CLIPS)) as pool:  # the 0.5 s batch window puts them in one batch
        together = list(pool.map(lambda clip: diarize(server.url, clip.path).json(), CLIPS))
    for clip, response, batched in zip(CLIPS, alone, together, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["object"], body["model"]) == ("diarization", "tiny-sortformer")
        assert body["duration"] == pytest.approx(clip.duration, abs=0.01)
        turns = turns_of(body)
        assert turns and turns == sorted(turns, key=lambda turn: turn.start)
        assert all(0 <= turn.start < turn.end <= body["duration"] for turn in turns)
        assert body["speakers"] == list(islice(letters(), len(body["speakers"])))
        assert same_turns(turns, nemo_turns(model, clip.path))
        assert batched == body


def test_known_speakers_are_named_by_their_voices(servers: Servers) -> None:
    """Sortformer enrols no voices: the bundled encoder names its speakers after the references."""
    server = servers.server

    def reference(name: str) -> str:
        return "data:audio/flac;base64," + base64.b64encode((VOICES / f"{name}.flac").read_bytes()).decode()

    known = {NAMES: ["Alice", "Bob"], REFERENCES: [reference("p225_023"), reference("p226_021")]}
    alice = diarize(server.url, VOICES / "p225_003.flac", **known).json()
    bob = diarize(server.url, VOICES / "p226_003.flac", **known).json()
    assert "Alice" in alice["speakers"] and "Bob" not in alice["speakers"]
    assert "Bob" in bob["speakers"] and "Alice" not in bob["speakers"]
    others = [speaker for speaker in alice["speakers"] if speaker != "Alice"]
    assert others == list(islice(letters(), len(others)))


def test_a_streaming_sortformer_diarizes_like_nemo(models: dict[str, Path]) -> None:
    """The streaming model runs chunk by chunk over the whole recording, batched: as NeMo's `diarize()`."""
    from servers.nemo import NemoConfig, SortformerAPI, model_card, read_config, resolve_auto

    config = resolve_auto(NemoConfig(model=str(models["streaming"]), name="tiny-streaming-sortformer"))
    api = SortformerAPI(config, model_card(config, read_config(config.model)))
    api.setup("cpu")
    assert api.model.streaming_mode
    clips = CLIPS[:2]
    found = api.diarize([(decode_audio(str(clip.path)), {}) for clip in clips])
    for clip, turns in zip(clips, found, strict=True):
        assert turns and same_turns(turns, nemo_turns(api.model, clip.path))


def test_the_router_serves_a_sortformer_entry_as_a_diarizer(servers: Servers) -> None:
    router = servers.router
    listed = httpx.get(router.url + "/v1/models/tiny-sortformer").json()
    assert listed["capabilities"]["diarize"] and not listed["capabilities"]["transcribe"]
    loaded = servers.loading.result()
    assert loaded.status_code == 200 and loaded.json()["family"] == "nemo", loaded.text
    response = diarize(router.url, CLIPS[0].path)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "tiny-sortformer" and response.json()["turns"]
    with CLIPS[0].path.open("rb") as f:
        refused = httpx.post(
            router.url + "/v1/audio/transcriptions", files={"file": f}, data={"model": "tiny-sortformer"}
        )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
