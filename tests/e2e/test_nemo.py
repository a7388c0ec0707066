"""The NeMo family end to end, on tiny random-weight models of the real classes (tests/nemo_models.py).

Their text is gibberish: these tests check plumbing (batching, timestamps, long audio, streaming,
translation routing, errors, the router), and compare the server with NeMo run in this process on
the same model. Accuracy is the faster-whisper tests' business.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise
from pathlib import Path

import httpx
import openai
import pytest
import websockets

from tests.helpers import CACHE, TINY_EN, ServerProcess, corpus, served_beside_whisper, stream_events, write_registry
from tests.realtime import append_event, encode

nemo_models = pytest.importorskip("tests.nemo_models")

DEV = corpus("dev")
LONG = min(corpus("long"), key=lambda c: c.duration)


@pytest.fixture(scope="module")
def models() -> dict[str, Path]:
    return nemo_models.build_all(CACHE / "nemo")


def nemo_server(path: Path, name: str, *options: str) -> ServerProcess:
    return ServerProcess("servers/nemo.py", "--model", str(path), "--name", name, *options, name=name)


@pytest.fixture(scope="module")
def servers(models: dict[str, Path]) -> Iterator[dict[str, ServerProcess]]:
    """The three NeMo kinds, started together (each imports NeMo: about 20 s)."""
    started = {
        # A long batch window, so that concurrent requests surely share batches.
        "tiny-tdt": nemo_server(models["tdt"], "tiny-tdt", "--batch-timeout", "0.5", "--chunk-seconds", "20"),
        "tiny-stream": nemo_server(models["streaming_rnnt"], "tiny-stream", "--batch-timeout", "0.3"),
        "tiny-canary": nemo_server(models["canary"], "tiny-canary"),
    }
    try:
        yield {name: server.wait_healthy() for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def post(server: ServerProcess, path: Path, route: str = "transcriptions", **data: str | list[str]) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(f"{server.url}/v1/audio/{route}", files={"file": f}, data=data, timeout=120)


def verbose(server: ServerProcess, clip) -> dict:
    """verbose_json with word and segment timestamps."""
    fields = {"model": "tiny-tdt", "response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
    return post(server, clip.path, **fields).json()


@cache
def inprocess(path: Path):
    from nemo.collections.asr.models import ASRModel

    return ASRModel.restore_from(str(path), map_location="cpu").eval()


def test_batched_results_equal_one_by_one(servers: dict[str, ServerProcess]) -> None:
    clips = DEV[:6]

    def one(clip):
        return verbose(servers["tiny-tdt"], clip)

    alone = [one(clip) for clip in clips]
    with ThreadPoolExecutor(len(clips)) as pool:
        together = list(pool.map(one, clips))
    assert together == alone
    assert all(r["text"] and r["words"] for r in alone)


def test_text_and_timestamps_equal_nemo_transcribe(servers: dict[str, ServerProcess], models) -> None:
    from faster_whisper import decode_audio

    clip = DEV[1]
    body = verbose(servers["tiny-tdt"], clip)
    model = inprocess(models["tdt"])
    (hyp,) = model.transcribe([decode_audio(str(clip.path))], timestamps=True, verbose=False)
    model.eval()
    assert body["text"] == hyp.text
    assert [w["word"] for w in body["words"]] == [w["word"] for w in hyp.timestamp["word"]]
    # The server clamps times to the audio: a last token's duration can reach past its end.
    assert [(w["start"], w["end"]) for w in body["words"]] == [
        (round(min(w["start"], clip.duration), 3), round(min(w["end"], clip.duration), 3))
        for w in hyp.timestamp["word"]
    ]


def test_timestamps_inside_the_audio_and_ordered(servers: dict[str, ServerProcess]) -> None:
    clip = DEV[2]
    body = verbose(servers["tiny-tdt"], clip)
    for items in (body["segments"], body["words"]):
        assert items
        for a, b in pairwise(items):
            assert 0 <= a["start"] <= a["end"] <= b["start"] + 1e-6
        assert items[-1]["end"] <= clip.duration + 0.01


def test_keywords_boost_their_request_only(servers: dict[str, ServerProcess]) -> None:
    """Per-stream biasing: a request's `keywords[]` pull its text toward them, with timestamps still right,
    while the request decoded beside it in the same batch is unchanged."""
    server, keywords = servers["tiny-tdt"], ["brown fox", "seven o'clock"]
    boosted_clip, other_clip = DEV[0], DEV[1]

    def count(text: str) -> int:
        return sum(text.count(k) for k in keywords)

    def boosted() -> dict:
        fields = {"response_format": "verbose_json", "timestamp_granularities[]": ["word"], "keywords[]": keywords}
        return post(server, boosted_clip.path, model="tiny-tdt", **fields).json()

    def other() -> str:
        return post(server, other_clip.path, model="tiny-tdt").json()["text"]

    plain, other_alone = post(server, boosted_clip.path, model="tiny-tdt").json()["text"], other()
    with ThreadPoolExecutor(2) as pool:  # the 0.5 s batch window puts both in one batch
        body_future, other_future = pool.submit(boosted), pool.submit(other)
    body, other_beside = body_future.result(), other_future.result()
    assert count(body["text"]) > count(plain)
    assert other_beside == other_alone
    words = body["words"]
    assert [w["word"] for w in words] == body["text"].split()
    for a, b in pairwise(words):
        assert 0 <= a["start"] <= a["end"] <= b["start"] + 1e-6
    assert words[-1]["end"] <= boosted_clip.duration + 0.01


def test_long_audio_is_decoded_in_windows_with_correct_times(servers: dict[str, ServerProcess]) -> None:
    body = post(servers["tiny-tdt"], LONG.path, model="tiny-tdt", response_format="verbose_json").json()
    segments = body["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and segments[-1]["end"] <= LONG.duration + 0.01
    # 20 s windows: text was found in every one of them, at its own place in the file.
    windows = {int(s["start"] // 20) for s in segments}
    assert windows == set(range(int(LONG.duration // 20) + 1))


def test_streaming_deltas_are_incremental_and_end_with_the_offline_text(servers: dict[str, ServerProcess]) -> None:
    server = servers["tiny-stream"]
    clips = DEV[3:6]

    def stream(clip) -> list[dict]:
        return [event for _, event in stream_events(server, clip.path, "tiny-stream")]

    with ThreadPoolExecutor(len(clips)) as pool:  # several streams stepped in one batch
        streamed = list(pool.map(stream, clips))
    for clip, events in zip(clips, streamed, strict=True):
        deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
        done = events[-1]
        assert done["type"] == "transcript.text.done"
        assert len(deltas) >= 2 and "".join(deltas) == done["text"]
        offline = post(server, clip.path, model="tiny-stream").json()["text"]
        assert done["text"].split() == offline.split()


def test_canary_routes_languages_and_translation(servers: dict[str, ServerProcess], models) -> None:
    from faster_whisper import decode_audio

    server, clip = servers["tiny-canary"], DEV[0]
    model = inprocess(models["canary"])

    def expected(source: str, target: str) -> str:
        (hyp,) = model.transcribe(
            [decode_audio(str(clip.path))], source_lang=source, target_lang=target, pnc="yes", verbose=False
        )
        model.eval()
        return hyp.text

    cases = {
        ("de", "de"): post(server, clip.path, model="tiny-canary", language="de"),
        ("es", "en"): post(server, clip.path, "translations", model="tiny-canary", language="es"),
        ("en", "fr"): post(server, clip.path, model="tiny-canary", language="en", target_language="fr"),
    }
    texts = {task: response.json()["text"] for task, response in cases.items()}
    assert texts == {task: expected(*task).strip() for task in cases}
    listed = sdk(server).models.retrieve("tiny-canary").model_dump()
    assert listed["languages"] == ["en", "de", "es", "fr"] and listed["capabilities"]["translate"] is True


def test_bad_input(servers: dict[str, ServerProcess], tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    cases = [
        (post(servers["tiny-tdt"], empty, model="tiny-tdt"), 400, "empty_file"),
        (post(servers["tiny-tdt"], DEV[0].path, "translations", model="tiny-tdt"), 400, "unsupported_task"),
        (post(servers["tiny-tdt"], DEV[0].path, model="parakeet"), 404, "model_not_found"),
        (
            post(servers["tiny-canary"], DEV[0].path, model="tiny-canary", **{"timestamp_granularities[]": "word"}),
            400,
            "unsupported_value",
        ),
        (post(servers["tiny-canary"], DEV[0].path, model="tiny-canary", language="ja"), 400, "unsupported_language"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert post(servers["tiny-tdt"], DEV[0].path, model="tiny-tdt").json()["text"]


def test_router_serves_a_nemo_model_beside_faster_whisper(models: dict[str, Path], tmp_path: Path) -> None:
    config = served_beside_whisper(tmp_path, {"id": "tiny-ctc", "family": "nemo", "source": str(models["ctc"])})
    assert config["kind"] == "ctc"


def test_canary_prompts_carry_the_source_and_target_languages(models: dict[str, Path]) -> None:
    """The tiny Canary's output hardly depends on its prompt, so check the prompts the server builds."""
    from common.audio import Audio
    from common.jobs import TranscriptionJob
    from servers.nemo import NemoAPI, NemoConfig, model_card, read_config, resolve_auto

    config = resolve_auto(NemoConfig(model=str(models["canary"]), name="tiny-canary"))
    api = NemoAPI(config, model_card(config, read_config(config.model)))
    api.setup("cpu")
    audio = Audio("unread", 16_000)  # the prompt does not depend on the audio

    def languages(**job: object) -> list[str]:
        tokens = api.model.tokenizer.ids_to_tokens(api._prompt(TranscriptionJob(audio, **job)).tolist())
        return [t for t in tokens if t.strip("<|>") in ("en", "de", "es", "fr")]

    assert languages(language="de") == ["<|de|>", "<|de|>"]
    assert languages(task="translate", language="es") == ["<|es|>", "<|en|>"]
    assert languages(language="en", target_language="fr") == ["<|en|>", "<|fr|>"]
    assert languages() == ["<|en|>", "<|en|>"]  # no language given: English


def test_realtime_sessions_on_a_cache_aware_model_step_live_streams(models: dict[str, Path], tmp_path: Path) -> None:
    """Four Realtime sessions at once through the router: each turn's deltas are exactly the live stream's
    new text, and the final transcript equals the offline decode of the same audio."""
    registry = write_registry(
        tmp_path,
        TINY_EN,
        {"id": "tiny-stream", "family": "nemo", "source": str(models["streaming_rnnt"])},
        {"id": "tiny-tdt", "family": "nemo", "source": str(models["tdt"])},
    )
    clips = DEV[6:10]
    # 16 kHz pcm16 reaches the model sample for sample: the offline decode of the file is the reference.
    audio_input = {"format": {"type": "audio/pcm", "rate": 16_000}, "turn_detection": None}
    session = {"type": "session.update", "session": {"type": "transcription", "audio": {"input": audio_input}}}

    async def one(url: str, clip) -> list[dict]:
        events = []
        async with websockets.connect(url) as ws:
            events.append(json.loads(await ws.recv()))
            await ws.send(json.dumps(session))
            audio = encode(clip.path, 16_000)
            for i in range(0, len(audio), 3200):  # 100 ms appends in real time
                await ws.send(append_event(audio[i : i + 3200]))
                await asyncio.sleep(0.1)
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            while not events[-1]["type"].endswith((".completed", ".failed")):
                events.append(json.loads(await ws.recv()))
        return events

    async def sessions(url: str) -> list[list[dict]]:
        return await asyncio.gather(*(one(url, clip) for clip in clips))

    with ServerProcess("servers/router.py", "--registry", str(registry), name="router-live") as router:
        assert httpx.post(router.url + "/api/ps/tiny-stream", timeout=300).status_code == 200  # loaded before
        results = asyncio.run(sessions(router.url.replace("http", "ws") + "/v1/realtime?model=tiny-stream"))
        for clip, events in zip(clips, results, strict=True):
            completed = events[-1]
            assert completed["type"] == "conversation.item.input_audio_transcription.completed", completed
            deltas = [e["delta"] for e in events if e["type"].endswith(".delta")]
            committed = [e["type"] for e in events].index("input_audio_buffer.committed")
            assert any(e["type"].endswith(".delta") for e in events[:committed]), "no interim text"
            assert "".join(deltas) == completed["transcript"]
            with clip.path.open("rb") as f:
                offline = httpx.post(
                    router.url + "/v1/audio/transcriptions",
                    files={"file": f},
                    data={"model": "tiny-stream"},
                    timeout=120,
                ).json()["text"]
            assert completed["transcript"].split() == offline.split()

        # A model without live streams refuses the router's live fields.
        with DEV[0].path.open("rb") as f:
            response = httpx.post(
                router.url + "/v1/audio/transcriptions",
                files={"file": f},
                data={"model": "tiny-tdt", "live_id": "x"},
                timeout=120,
            )
        assert response.status_code == 400 and response.json()["error"]["param"] == "live_id"
