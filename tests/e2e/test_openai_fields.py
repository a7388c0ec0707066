"""OpenAI's 2026 fields through the real SDK: keywords[], languages[], the model ids clients hardcode,
aliases listed by their own names, and the same through a Realtime session."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import openai
import pytest
import websockets
from faster_whisper import decode_audio

from common.models import OPENAI_MODEL_IDS
from tests.e2e.test_multilingual import ONE_PER_LANGUAGE, inprocess
from tests.helpers import ServerProcess, corpus
from tests.realtime import TRANSCRIPTION, encode, silence, stream

DEV = {clip.id: clip for clip in corpus("dev")}
# Names tiny.en gets wrong without help ("mains", "Schofer", "chauffeur", "Swainheim", "Subiakal").
NAMES = {
    "LJ001-0024": ["Maintz", "Schoeffer"],
    "LJ001-0027": ["Schoeffer"],
    "LJ001-0031": ["Sweynheim", "Pannartz", "Subiaco"],
}
KEYWORDS = sorted({name for names in NAMES.values() for name in names})


@pytest.fixture(scope="module")
def router() -> Iterator[ServerProcess]:
    """The router on the shipped registry (configs/models.yaml), as a user runs it."""
    with ServerProcess("servers/router.py", name="router-openai-fields") as server:
        yield server


def transcribe(client: openai.OpenAI, clip_id: str, **options: object):
    with DEV[clip_id].path.open("rb") as f:
        return client.audio.transcriptions.create(model="whisper-1", file=f, **options)


def test_keywords_fix_misrecognized_names(client: openai.OpenAI) -> None:
    for clip_id, names in NAMES.items():
        plain = transcribe(client, clip_id).text
        assert not any(name in plain for name in names), plain
        boosted = transcribe(client, clip_id, keywords=KEYWORDS).text
        assert all(name in boosted for name in names), boosted


@pytest.mark.parametrize(
    "keywords",
    [["Maintz", "a<b"], ["x>y"], ["two\nlines"], ["carriage\rreturn"], ["tab\there"], [" "], ["k" * 101]],
)
def test_one_invalid_keyword_fails_the_request(client: openai.OpenAI, keywords: list[str]) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        transcribe(client, "LJ001-0024", keywords=keywords)
    assert error.value.body["param"] == "keywords[]" and error.value.body["code"] == "invalid_value"


def test_keyword_count_is_bounded(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        transcribe(client, "LJ001-0024", keywords=[f"word{i}" for i in range(101)])
    assert "at most 100" in error.value.body["message"]
    assert transcribe(client, "LJ001-0024", keywords=[f"word{i}" for i in range(100)]).text


def test_languages_restrict_detection(multilingual_client: openai.OpenAI) -> None:
    """With the spoken language among the candidates, it is found; without it, the answer is still one
    of the candidates: the one Whisper (in this process) finds most probable among them. Three languages
    (each costs two whole transcriptions by whisper-base); test_multilingual detects all nine."""
    for clip in ONE_PER_LANGUAGE[:3]:
        other = "fi" if clip.language != "fi" else "et"
        with clip.path.open("rb") as f:
            found = multilingual_client.audio.transcriptions.create(
                model="whisper-base", file=f, languages=[other, clip.language]
            )
        assert [language.code for language in found.languages] == [clip.language]
        probabilities = dict(inprocess().detect_language(decode_audio(str(clip.path)), vad_filter=True)[2])
        candidates = [code for code in ("fi", "hu", "et", "lt") if code != clip.language][:2]
        with clip.path.open("rb") as f:
            restricted = multilingual_client.audio.transcriptions.create(
                model="whisper-base", file=f, languages=candidates, response_format="verbose_json"
            )
        assert restricted.model_dump()["languages"] == [{"code": max(candidates, key=probabilities.__getitem__)}]


def test_languages_errors_and_absence(client: openai.OpenAI) -> None:
    for options, param, code in [
        ({"language": "en", "languages": ["en"]}, "languages[]", "invalid_value"),
        ({"languages": ["de", "fr"]}, "languages[]", "unsupported_language"),  # tiny.en knows English only
        ({"languages": ["en", "xx"]}, "languages[]", "invalid_language"),
    ]:
        with pytest.raises(openai.BadRequestError) as error:
            transcribe(client, "LJ001-0024", **options)
        assert (error.value.body["param"], error.value.body["code"]) == (param, code)
    assert transcribe(client, "LJ001-0024", languages=["de", "en"]).model_dump()["languages"] == [{"code": "en"}]
    assert "languages" not in transcribe(client, "LJ001-0024").model_dump(exclude_unset=True)


def test_openai_model_ids_and_logprobs(client: openai.OpenAI) -> None:
    texts = set()
    for model in OPENAI_MODEL_IDS:
        with DEV["LJ001-0024"].path.open("rb") as f:
            result = client.audio.transcriptions.create(model=model, file=f, include=["logprobs"])
        texts.add(result.text)
        assert result.logprobs and "".join(p.token for p in result.logprobs).strip() == result.text
    assert len(texts) == 1


def test_logprobs_on_each_stream_delta(client: openai.OpenAI) -> None:
    with DEV["LJ001-0027"].path.open("rb") as f:
        events = list(
            client.audio.transcriptions.create(model="gpt-4o-transcribe", file=f, stream=True, include=["logprobs"])
        )
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert deltas and all(e.logprobs for e in deltas)
    assert "".join(p.token for e in deltas for p in e.logprobs).strip() == events[-1].text


def test_aliases_by_their_own_names(router: ServerProcess) -> None:
    sdk = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
    listed = {m.id: m.model_dump() for m in sdk.models.list()}
    for alias in OPENAI_MODEL_IDS:
        assert listed[alias]["root"] == "tiny.en"
        assert sdk.models.retrieve(alias).id == alias
    assert listed["tiny.en"]["root"] == "tiny.en" and listed["tiny.en"]["aliases"] == list(OPENAI_MODEL_IDS)
    loaded = httpx.post(router.url + "/api/ps/gpt-4o-transcribe", timeout=120).json()
    assert loaded["id"] == "tiny.en" and loaded["names"] == ["tiny.en", *OPENAI_MODEL_IDS]
    ps = httpx.get(router.url + "/api/ps").json()["models"]
    assert [m["names"] for m in ps] == [["tiny.en", *OPENAI_MODEL_IDS]]
    with DEV["LJ001-0031"].path.open("rb") as f:
        result = sdk.audio.transcriptions.create(model="gpt-transcribe", file=f, keywords=KEYWORDS)
    assert all(name in result.text for name in NAMES["LJ001-0031"])


def realtime_session(model: str, transcription: dict) -> dict:
    audio = {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": {"model": model, **transcription}}
    return {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {"input": audio},
            "include": ["item.input_audio_transcription.logprobs"],
        },
    }


@pytest.mark.parametrize("model", ["gpt-live-transcribe", "gpt-realtime-whisper"])
def test_realtime_models_keywords_and_logprobs(router: ServerProcess, model: str) -> None:
    url = router.url.replace("http://", "ws://") + f"/v1/realtime?intent=transcription&model={model}"
    session = realtime_session(model, {"keywords": KEYWORDS, "delay": "low", "language": "en"})
    pieces = [silence(0.5), encode(DEV["LJ001-0031"].path), silence(1.5)]
    recording = asyncio.run(stream(url, pieces, session=session, expect_items=1))
    updated = recording.of("session.updated")[0]["session"]["audio"]["input"]["transcription"]
    assert (updated["model"], updated["keywords"], updated["delay"]) == (model, KEYWORDS, "low")
    (completed,) = recording.of(f"{TRANSCRIPTION}.completed")
    # Without keywords none of the three names is right; the session's audio is resampled from 24 kHz, and
    # one name may come out a letter off ("Swynheim").
    assert sum(name in completed["transcript"] for name in NAMES["LJ001-0031"]) >= 2, completed["transcript"]
    assert "".join(p["token"] for p in completed["logprobs"]).strip() == completed["transcript"]
    assert all(p["logprob"] <= 0 and p["bytes"] == list(p["token"].encode()) for p in completed["logprobs"])


def test_realtime_invalid_keywords_reject_the_whole_update(router: ServerProcess) -> None:
    url = router.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"

    async def run() -> list[dict]:
        async with websockets.connect(url) as ws:
            await ws.recv()
            await ws.send(json.dumps(realtime_session("tiny.en", {"keywords": ["ok", "not<ok>"], "language": "de"})))
            await ws.send(json.dumps(realtime_session("tiny.en", {"keywords": "a string"})))
            await ws.send(json.dumps(realtime_session("tiny.en", {"prompt": "fine"})))
            return [json.loads(await ws.recv()) for _ in range(3)]

    first, second, third = asyncio.run(run())
    assert (first["type"], first["error"]["param"], first["error"]["code"]) == ("error", "keywords", "invalid_value")
    assert second["type"] == "error" and second["error"]["param"] == "keywords"
    transcription = third["session"]["audio"]["input"]["transcription"]
    assert third["type"] == "session.updated" and transcription["language"] is None, "nothing of the bad one taken"
    assert transcription["keywords"] == [] and transcription["prompt"] == "fine"
