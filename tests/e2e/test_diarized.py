"""Who said what through the router and the real `openai` SDK: diarized_json on the corpus'
five-speaker recording, known speakers named, the streamed segment events, speakers in verbose_json,
srt and vtt, the CLI's `--diarize`, and each refusal."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import websockets
from faster_whisper import decode_audio
from openai.types.audio import TranscriptionDiarized, TranscriptionTextSegmentEvent

from tests.helpers import CORPUS, ServerProcess, corpus, data_url, wav

LONG = next(clip for clip in corpus("long") if "multispeaker" in clip.path.name)
MANIFEST = (CORPUS / "long" / "manifest.jsonl").read_text().splitlines()
TURNS = [
    (s["start"], s["end"], s["speaker"])
    for line in MANIFEST
    if "multispeaker" in line
    for s in json.loads(line)["segments"]
]
DEV = {clip.id: clip for clip in corpus("dev")}
RATE = 16_000


def excerpt(*spans: tuple[float, float]) -> bytes:
    """Stretches of the five-speaker recording, one after the other, as WAV."""
    samples = decode_audio(str(LONG.path))
    return wav(np.concatenate([samples[int(start * RATE) : int(end * RATE)] for start, end in spans]))


def reference(clip_id: str, seconds: float | None = None) -> str:
    samples = decode_audio(str(DEV[clip_id].path))
    return data_url(samples if seconds is None else np.resize(samples, int(seconds * RATE)))


def speaker_during(segments: list, start: float, end: float) -> str:
    """The speaker of most of the segments' time in [start, end]."""
    time: dict[str, float] = {}
    for s in segments:
        overlap = min(end, s.end) - max(start, s.start)
        if overlap > 0:
            time[s.speaker] = time.get(s.speaker, 0.0) + overlap
    return max(time, key=time.__getitem__)


@pytest.fixture(scope="module")
def router() -> Iterator[ServerProcess]:
    """The router on the shipped registry, whose default diarizer is the bundled one."""
    with ServerProcess("servers/router.py", name="router-diarized") as server:
        yield server


@pytest.fixture(scope="module")
def sdk(router: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def diarized(sdk: openai.OpenAI) -> TranscriptionDiarized:
    with LONG.path.open("rb") as f:
        return sdk.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=f, response_format="diarized_json", chunking_strategy="auto"
        )


def test_diarized_json_has_a_segment_per_speaker_change(diarized: TranscriptionDiarized) -> None:
    assert isinstance(diarized, TranscriptionDiarized) and diarized.task == "transcribe"
    assert diarized.duration == pytest.approx(LONG.duration, abs=0.01)
    assert diarized.usage.type == "duration" and diarized.text
    segments = diarized.segments
    assert all(s.type == "transcript.text.segment" and s.text for s in segments)
    assert [s.start for s in segments] == sorted(s.start for s in segments)
    # Five voices, lettered in order of first appearance, each the speaker of one reference speaker's time.
    first = list(dict.fromkeys(s.speaker for s in segments))
    assert first == ["A", "B", "C", "D", "E"]
    truth = {}
    for start, end, speaker in TURNS:
        truth.setdefault(speaker, []).append(speaker_during(segments, start, end))
    assert {speaker: set(found) for speaker, found in truth.items()} == {
        "LS-1089": {"A"},
        "LS-2412": {"B"},
        "VCTK-p225": {"C"},
        "VCTK-p226": {"D"},
        "MFA-spk1": {"E"},
    }
    # The speaker changes where the reference's does, to within a second.
    changes = [b.start for a, b in itertools.pairwise(segments) if a.speaker != b.speaker]
    expected = [b[0] for a, b in itertools.pairwise(TURNS) if a[2] != b[2]]
    assert len(changes) == len(expected)
    assert all(abs(found - truth) < 1.0 for found, truth in zip(changes, expected, strict=True)), changes


def test_known_speakers_are_named(sdk: openai.OpenAI) -> None:
    """Two voices enrolled with clips that are cut out of the audio sent; the third voice keeps a letter."""
    # LS-2412 (0-23.6 s), p225 without its enrolled clip p225_003 (24-89 s), p226 to p226_011 (89.9-119.9 s)
    audio = excerpt((24.0, 47.6), (54.6, 150.9))
    response = sdk.audio.transcriptions.create(
        model="whisper-1",
        file=("excerpt.wav", audio),
        response_format="diarized_json",
        known_speaker_names=["alice", "bob"],
        known_speaker_references=[reference("p225_003"), reference("p226_016")],
    )
    assert speaker_during(response.segments, 0.5, 23.0) == "A"
    assert speaker_during(response.segments, 24.5, 88.5) == "alice"
    assert speaker_during(response.segments, 90.5, 119.5) == "bob"
    assert {s.speaker for s in response.segments} == {"A", "alice", "bob"}


def test_streamed_segments(sdk: openai.OpenAI) -> None:
    stream = sdk.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("excerpt.wav", excerpt((103.8, 135.0))),  # p225, then p226 from 120.9 s
        response_format="diarized_json",
        stream=True,
    )
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[-1] == "transcript.text.done" and "transcript.text.segment" in kinds
    segments = [e for e in events if isinstance(e, TranscriptionTextSegmentEvent)]
    assert segments[0].speaker == "A" and segments[-1].speaker == "B"
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert {d.segment_id for d in deltas} <= {s.id for s in segments}
    # Each segment's deltas come before it; all of them make the final text.
    assert "".join(d.delta for d in deltas).strip() == events[-1].text
    change = next(s.start for s in segments if s.speaker == "B")
    assert abs(change - (120.881 - 103.8)) < 1.0


def test_speakers_in_the_other_formats(sdk: openai.OpenAI) -> None:
    audio = excerpt((103.8, 135.0))
    verbose = sdk.audio.transcriptions.create(
        model="whisper-1",
        file=("excerpt.wav", audio),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        extra_body={"diarize": "true"},
    )
    assert {s.speaker for s in verbose.segments} == {"A", "B"}
    assert {w.speaker for w in verbose.words} == {"A", "B"}  # type: ignore[attr-defined]
    srt = sdk.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("excerpt.wav", audio), response_format="srt"
    )
    assert "\n[A] " in srt and "\n[B] " in srt
    vtt = sdk.audio.transcriptions.create(
        model="whisper-1", file=("excerpt.wav", audio), response_format="vtt", extra_body={"diarize": "true"}
    )
    assert "\n<v A>" in vtt and "\n<v B>" in vtt
    plain = sdk.audio.transcriptions.create(model="whisper-1", file=("excerpt.wav", audio), response_format="srt")
    assert "[A]" not in plain


def test_the_cli_prints_who_said_what(router: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "excerpt.wav"
    path.write_bytes(excerpt((103.8, 135.0)))
    cli = Path(sys.executable).parent / "open-speech"
    done = subprocess.run(
        [cli, "transcribe", path, "--url", router.url, "--diarize"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["A", "B"] and all(len(line) > 10 for line in lines)


@pytest.mark.parametrize(
    ("names", "references", "param"),
    [
        (["alice"], [], "known_speaker_references[]"),
        (["a", "b", "c", "d", "e"], ["p225_003"] * 5, "known_speaker_names[]"),
        (["alice"], ["data:audio/wav;base64,not base64!"], "known_speaker_references[]"),
        (["alice"], ["https://example.com/alice.wav"], "known_speaker_references[]"),
        (["alice"], [("p225_003", 1.0)], "known_speaker_references[]"),
        (["alice"], [("p225_003", 11.0)], "known_speaker_references[]"),
    ],
)
def test_bad_known_speakers_are_refused(sdk: openai.OpenAI, names: list, references: list, param: str) -> None:
    sent = [
        r if isinstance(r, str) and r.startswith(("data:", "http")) else reference(*([r] if isinstance(r, str) else r))
        for r in references
    ]
    with pytest.raises(openai.BadRequestError) as error:
        sdk.audio.transcriptions.create(
            model="whisper-1",
            file=("clip.wav", excerpt((0.0, 3.0))),
            response_format="diarized_json",
            known_speaker_names=names,
            known_speaker_references=sent,
        )
    assert error.value.body["param"] == param, error.value.body


def test_diarized_json_is_for_transcriptions(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        sdk.audio.translations.create(
            model="whisper-1", file=("clip.wav", excerpt((0.0, 3.0))), response_format="diarized_json"
        )
    assert error.value.body["param"] == "response_format"


def test_a_diarizer_is_no_transcription_model(sdk: openai.OpenAI, router: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        sdk.audio.transcriptions.create(model="diarizer", file=("clip.wav", excerpt((0.0, 3.0))))
    assert (error.value.body["param"], error.value.body["code"]) == ("model", "unsupported_task")
    refused = httpx.post(
        router.url + "/v1/audio/diarizations",
        files={"file": ("clip.wav", excerpt((0.0, 3.0)))},
        data={"model": "whisper-1"},
    )
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_task"

    async def session() -> tuple[dict, int]:
        url = router.url.replace("http", "ws") + "/v1/realtime?intent=transcription&model=diarizer"
        async with websockets.connect(url) as ws:
            event = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        return event, closed.value.rcvd.code

    event, code = asyncio.run(session())
    assert (event["error"]["code"], code) == ("unsupported_task", 1008)
