"""The OpenAI audio API end to end: a real server, the official `openai` SDK, real speech."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise
from pathlib import Path

import openai
import pytest
from faster_whisper import WhisperModel, decode_audio

from common.models import OPENAI_MODEL_IDS
from servers.faster_whisper import FALLBACK_TEMPERATURES, model_path
from tests.helpers import SEGMENT_FIELDS, Clip, ServerProcess, beside_a_stream, convert, corpus, normalize, wer

DEV = corpus("dev")
LONG_CLIP = max(DEV, key=lambda c: c.duration)  # long enough for several Whisper segments


@cache
def inprocess() -> WhisperModel:
    """faster-whisper in this process, with the server's default settings."""
    return WhisperModel(model_path("bundled"), device="cpu", compute_type="int8")


def inprocess_text(clip: Clip, **options: object) -> str:
    settings = {"beam_size": 5, "temperature": FALLBACK_TEMPERATURES, **options}
    segments, _ = inprocess().transcribe(decode_audio(str(clip.path)), **settings)
    return "".join(s.text for s in segments).strip()


def transcribe(client: openai.OpenAI, path: Path, **kwargs: object):
    with path.open("rb") as f:
        return client.audio.transcriptions.create(model="whisper-1", file=f, **kwargs)


def test_json_is_the_text_of_in_process_faster_whisper(client: openai.OpenAI) -> None:
    clip = DEV[0]
    result = transcribe(client, clip.path)
    assert result.text == inprocess_text(clip)
    assert result.usage.type == "duration" and result.usage.seconds >= int(clip.duration)


@pytest.mark.parametrize("response_format", ["text", "srt", "vtt"])
def test_text_formats(client: openai.OpenAI, response_format: str) -> None:
    body = transcribe(client, LONG_CLIP.path, response_format=response_format)
    assert isinstance(body, str)
    expected_words = normalize(inprocess_text(LONG_CLIP)).split()
    if response_format == "text":
        assert body == inprocess_text(LONG_CLIP) + "\n"
        return
    cues = [c for c in body.split("\n\n") if "-->" in c]
    assert len(cues) >= 2, body
    separator = "," if response_format == "srt" else "."
    if response_format == "vtt":
        assert body.startswith("WEBVTT\n\n")
    cue_text = " ".join(c.split("\n", 2)[-1] if response_format == "srt" else c.split("\n", 1)[1] for c in cues)
    assert normalize(cue_text).split() == expected_words
    times = [line for c in cues for line in c.splitlines() if "-->" in line]
    assert all(separator in t and t.count(":") == 4 for t in times)


def test_verbose_json_has_openai_fields_and_ordered_timestamps(client: openai.OpenAI) -> None:
    result = transcribe(
        client, LONG_CLIP.path, response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    body = result.model_dump()
    assert body["language"] == "english" and body["task"] == "transcribe"
    assert abs(body["duration"] - LONG_CLIP.duration) < 0.05
    assert len(result.segments) >= 2
    previous_end = 0.0
    for i, segment in enumerate(body["segments"]):
        assert set(segment) == SEGMENT_FIELDS and segment["id"] == i
        assert isinstance(segment["tokens"], list) and segment["tokens"]
        assert previous_end <= segment["start"] <= segment["end"] <= body["duration"] + 0.01
        previous_end = segment["start"]
    words = body["words"]
    assert " ".join(w["word"] for w in words).split() == body["text"].split()
    for a, b in pairwise(words):
        assert 0 <= a["start"] <= a["end"] <= b["start"] + 1e-6
    assert words[-1]["end"] <= body["duration"] + 0.01


def test_word_timestamps_only(client: openai.OpenAI) -> None:
    body = transcribe(client, DEV[1].path, response_format="verbose_json", timestamp_granularities=["word"])
    assert body.words and not body.segments


def test_stream_deltas_arrive_per_segment_and_concatenate_to_done(client: openai.OpenAI) -> None:
    with LONG_CLIP.path.open("rb") as f:
        events = list(client.audio.transcriptions.create(model="whisper-1", file=f, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(deltas) >= 2 and len(done) == 1 and events[-1] is done[0]
    assert "".join(deltas) == done[0].text == inprocess_text(LONG_CLIP)
    assert done[0].usage.seconds >= int(LONG_CLIP.duration)


def test_prompt_and_temperature_are_those_of_faster_whisper(client: openai.OpenAI) -> None:
    clip = DEV[2]
    prompt = "Transcript of an audiobook, with British spelling."
    assert transcribe(client, clip.path, prompt=prompt, temperature=0).text == inprocess_text(
        clip, initial_prompt=prompt, temperature=0.0
    )


def test_logprobs(client: openai.OpenAI) -> None:
    result = transcribe(client, DEV[3].path, include=["logprobs"])
    assert result.logprobs and all(p.logprob <= 0 for p in result.logprobs)
    assert "".join(p.token for p in result.logprobs).strip() == result.text


def test_fields_it_cannot_honour_are_ignored(whisper_server) -> None:
    import httpx

    with DEV[0].path.open("rb") as f:
        response = httpx.post(
            whisper_server.url + "/v1/audio/transcriptions",
            files={"file": ("a.flac", f, "audio/flac")},
            data={"model": "whisper-1", "chunking_strategy": "auto", "keywords": "stew", "known_speaker_names[]": "x"},
            timeout=60,
        )
    assert response.status_code == 200 and response.json()["text"]


def test_english_only_model_refuses_to_translate(client: openai.OpenAI) -> None:
    with DEV[0].path.open("rb") as f, pytest.raises(openai.BadRequestError) as error:
        client.audio.translations.create(model="whisper-1", file=f)
    assert error.value.body["code"] == "unsupported_task"


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny.en", *OPENAI_MODEL_IDS]
    assert client.models.retrieve("whisper-1").model_dump()["root"] == "tiny.en"


CONTAINERS = {
    "mp3": ("clip.mp3", ["-b:a", "64k"]),
    "ogg-opus": ("clip.ogg", ["-c:a", "libopus"]),
    "webm": ("clip.webm", ["-c:a", "libopus"]),
    "m4a": ("clip.m4a", ["-c:a", "aac"]),
    "flac": ("clip.flac", []),
    "wav-44k-stereo": ("clip.wav", ["-ar", "44100", "-ac", "2"]),
}


@pytest.mark.parametrize("container", CONTAINERS)
def test_every_container(client: openai.OpenAI, tmp_path: Path, container: str) -> None:
    clip = DEV[0]
    name, args = CONTAINERS[container]
    copy = convert(clip.path, tmp_path / name, *args)
    assert wer([clip.text], [transcribe(client, copy).text]) <= 0.1


def test_raw_pcm16(whisper_server, tmp_path: Path) -> None:
    import httpx

    clip = DEV[0]
    pcm = convert(clip.path, tmp_path / "clip.raw", "-f", "s16le", "-ar", "24000", "-ac", "1").read_bytes()
    response = httpx.post(
        whisper_server.url + "/v1/audio/transcriptions",
        files={"file": ("clip.pcm", pcm, "audio/pcm;rate=24000")},
        data={"model": "whisper-1"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert wer([clip.text], [response.json()["text"]]) <= 0.1


def test_sixteen_concurrent_requests_each_get_their_own_text(client: openai.OpenAI) -> None:
    clips = DEV[4:20]
    expected = [inprocess_text(c) for c in clips]
    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(lambda c: transcribe(client, c.path).text, clips))
    assert texts == expected


def test_a_short_request_is_answered_while_a_long_one_is_decoded(
    whisper_server: ServerProcess, client: openai.OpenAI, tmp_path: Path
) -> None:
    """Requests start as they arrive (continuous batching), not when the batch ahead of them has ended."""
    # 230 s of speech (under the test server's audio limit): its windows keep both workers busy for seconds.
    long_clip = convert(corpus("long")[0].path, tmp_path / "long.flac", "-t", "230")

    def short_request() -> float:
        assert transcribe(client, DEV[0].path).text == inprocess_text(DEV[0])
        return time.monotonic()

    answered, long_ended = beside_a_stream(whisper_server, long_clip, "tiny.en", short_request)
    assert answered < long_ended


def cpu_ticks_by_nice(server: ServerProcess) -> Counter[int]:
    """CPU time (clock ticks) the server's processes have used so far, by their threads' nice values."""
    ticks: Counter[int] = Counter()
    for process in Path("/proc").glob("[0-9]*"):
        try:
            if int((process / "stat").read_text().rsplit(")", 1)[1].split()[2]) != server.process.pid:
                continue  # not in the server's process group
            for thread in (process / "task").iterdir():
                fields = (thread / "stat").read_text().rsplit(")", 1)[1].split()
                ticks[int(fields[16])] += int(fields[11]) + int(fields[12])  # nice: utime + stime
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
    return ticks


def test_interim_text_is_decoded_at_the_lowest_cpu_priority(whisper_server: ServerProcess) -> None:
    """A Realtime turn's interim re-decode (`interim=true`, sent by the router) runs on threads at nice
    19, which get only CPU time nothing else wants; any other request runs at normal priority."""
    import httpx

    def post(**fields: str) -> Counter[int]:
        before = cpu_ticks_by_nice(whisper_server)
        with LONG_CLIP.path.open("rb") as f:
            response = httpx.post(
                whisper_server.url + "/v1/audio/transcriptions",
                files={"file": ("a.flac", f, "audio/flac")},
                data={"model": "whisper-1", **fields},
                timeout=120,
            )
        assert response.status_code == 200 and response.json()["text"]
        used = cpu_ticks_by_nice(whisper_server)
        used.subtract(before)
        return used

    interim = post(interim="true", temperature="0")
    assert interim[19] > interim[0]  # the decoding itself: at nice 19
    final = post()
    assert final[19] == 0 and final[0] > 0
    # The worker says so in the server's log (LitServe's workers are spawned processes: a callback sets
    # up their logging).
    assert "interim text at low priority" in whisper_server.log_path.read_text()


def test_dev_corpus_text_and_wer_equal_in_process(client: openai.OpenAI) -> None:
    expected = [inprocess_text(c) for c in DEV]
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda c: transcribe(client, c.path).text, DEV))
    mismatches = [(c.id, e, t) for c, e, t in zip(DEV, expected, texts, strict=True) if e != t]
    assert not mismatches, json.dumps(mismatches, indent=1)
    references = [c.text for c in DEV]
    assert wer(references, texts) == wer(references, expected) < 0.07
