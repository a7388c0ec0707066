"""The ONNX family end to end, on the tiny random-weight TDT model exported in tests/onnx_models.py.

Its text is gibberish: these tests check plumbing (batching, VAD pieces and their times, words,
streaming, errors, the router) and compare the server with onnx-asr run in this process on the same
model. Accuracy is the faster-whisper tests' business.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.helpers import CACHE, ServerProcess, corpus, served_beside_whisper, stream_events

pytest.importorskip("onnx_asr")
onnx_models = pytest.importorskip("tests.onnx_models")
pytest.importorskip("nemo")  # the export needs NeMo

DEV = corpus("dev")
LONG = min(corpus("long"), key=lambda c: c.duration)
WORDS = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}


@pytest.fixture(scope="module")
def model() -> Path:
    return onnx_models.build_tdt_onnx(CACHE / "onnx" / "tiny-tdt")


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[ServerProcess]:
    # A long batch window, so that concurrent requests surely share batches.
    with ServerProcess(
        "servers/onnx.py", "--model", str(model), "--name", "tiny-onnx", "--batch-timeout", "0.5", name="tiny-onnx"
    ) as started:
        yield started


def post(server: ServerProcess, path: Path, route: str = "transcriptions", **data: object) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(f"{server.url}/v1/audio/{route}", files={"file": f}, data=data, timeout=300)


def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_batched_results_equal_one_by_one(server: ServerProcess) -> None:
    clips = DEV[:6]

    def one(clip):
        return post(server, clip.path, model="tiny-onnx", **WORDS).json()

    alone = [one(clip) for clip in clips]
    with ThreadPoolExecutor(len(clips)) as pool:
        together = list(pool.map(one, clips))
    assert together == alone
    assert all(r["text"] and r["words"] for r in alone)


def test_results_equal_onnx_asr_in_process(server: ServerProcess, model: Path) -> None:
    """The same VAD pieces and texts as onnx-asr's own VAD adapter, on the same Silero model."""
    import onnx_asr
    from faster_whisper import decode_audio

    from servers.onnx import BundledSileroVad

    asr = onnx_asr.load_model("nemo-conformer-tdt", model).with_vad(BundledSileroVad(), max_speech_duration_s=20)
    for clip in (DEV[1], LONG):
        body = post(server, clip.path, model="tiny-onnx", response_format="verbose_json").json()
        expected = [s for s in asr.with_timestamps().recognize(decode_audio(str(clip.path))) if s.text.strip()]
        assert [(s["start"], s["end"], s["text"]) for s in body["segments"]] == [
            (round(s.start, 3), round(s.end, 3), " " + s.text.strip()) for s in expected
        ]
        assert body["text"] == " ".join(s.text.strip() for s in expected)


def test_logprobs_are_onnx_asr_token_log_probabilities(server: ServerProcess, model: Path) -> None:
    """Per token, as onnx-asr gives them for the same VAD pieces (see the test above)."""
    import onnx_asr
    from faster_whisper import decode_audio

    from servers.onnx import BundledSileroVad

    asr = onnx_asr.load_model("nemo-conformer-tdt", model).with_vad(BundledSileroVad(), max_speech_duration_s=20)
    clip = DEV[1]
    body = post(server, clip.path, model="tiny-onnx", **{"include[]": "logprobs"}).json()
    pieces = [s for s in asr.with_timestamps().recognize(decode_audio(str(clip.path))) if s.text.strip()]
    assert [p["token"] for p in body["logprobs"]] == [token for s in pieces for token in s.tokens]
    assert [p["logprob"] for p in body["logprobs"]] == pytest.approx([p for s in pieces for p in s.logprobs], abs=1e-3)
    assert all(p["bytes"] == list(p["token"].encode()) for p in body["logprobs"])
    assert "logprobs" not in post(server, clip.path, model="tiny-onnx").json()


def test_timestamps_inside_the_audio_and_ordered(server: ServerProcess) -> None:
    clip = DEV[2]
    body = post(server, clip.path, model="tiny-onnx", **WORDS).json()
    for items in (body["segments"], body["words"]):
        assert items
        for a, b in pairwise(items):
            assert 0 <= a["start"] <= a["end"] <= b["start"] + 1e-6
        assert items[-1]["end"] <= clip.duration + 0.01
    assert [w["word"].strip() for w in body["words"]] == body["text"].split()
    for segment in body["segments"]:  # every word lies inside its segment
        assert all(segment["start"] <= w["start"] <= w["end"] <= segment["end"] for w in segment.get("words") or [])


def test_long_audio_is_cut_into_pieces_with_correct_times(server: ServerProcess) -> None:
    body = post(server, LONG.path, model="tiny-onnx", response_format="verbose_json").json()
    segments = body["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    assert all(a["end"] <= b["start"] for a, b in pairwise(segments))
    assert all(s["end"] - s["start"] <= 20.01 for s in segments)  # max_segment_seconds
    # The pieces span the file: speech is found from its start to its end, at its own place.
    assert segments[0]["start"] < 20 and LONG.duration - 20 < segments[-1]["end"] <= LONG.duration + 0.01
    assert len(segments) >= LONG.duration / 20


def test_streaming_deltas_concatenate_to_the_done_text(server: ServerProcess) -> None:
    def stream(clip) -> list[dict]:
        return [event for _, event in stream_events(server, clip.path, "tiny-onnx")]

    clips = [LONG, *DEV[3:5]]
    with ThreadPoolExecutor(len(clips)) as pool:  # several streams in one batch
        streamed = list(pool.map(stream, clips))
    for clip, events in zip(clips, streamed, strict=True):
        deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
        done = events[-1]
        assert done["type"] == "transcript.text.done"
        assert deltas and "".join(deltas) == done["text"]
        assert done["text"] == post(server, clip.path, model="tiny-onnx").json()["text"]
    assert len([e for e in streamed[0] if e["type"] == "transcript.text.delta"]) > 1


def test_bad_input(server: ServerProcess, tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    cases = [
        (post(server, empty, model="tiny-onnx"), 400, "empty_file"),
        (post(server, DEV[0].path, model="parakeet"), 404, "model_not_found"),
        (post(server, DEV[0].path, "translations", model="tiny-onnx"), 400, "unsupported_task"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert post(server, DEV[0].path, model="tiny-onnx").json()["text"]
    listed = sdk(server).models.retrieve("tiny-onnx").model_dump()
    assert listed["capabilities"]["translate"] is False and listed["capabilities"]["word_timestamps"] is True


def test_a_failing_piece_fails_only_its_request(model: Path, tmp_path: Path) -> None:
    """In process: a batch call that fails is retried piece by piece; only the bad job gets an error."""
    from common.audio import AudioLimits, spool
    from common.jobs import TranscriptionJob
    from servers.onnx import OnnxAPI, OnnxConfig, model_card, model_class, resolve_auto

    config = resolve_auto(OnnxConfig(model=str(model), vad=False, max_segment_seconds=5))
    api = OnnxAPI(config, model_card(config, model_class(config)))
    api.setup("cpu")
    recognize = api.asr.recognize_batch

    def fragile(waveforms, lengths, **options):
        if 12345 in lengths:
            raise RuntimeError("bad piece")
        return recognize(waveforms, lengths, **options)

    api.asr.recognize_batch = fragile
    rng = np.random.default_rng(0)
    limits = AudioLimits(60, tmp_path)
    jobs = [
        TranscriptionJob(spool(rng.standard_normal(n).astype(np.float32) * 0.1, limits)) for n in (32000, 12345, 96000)
    ]
    events: list[list[dict]] = [[] for _ in jobs]
    for step in api.transcribe_batch(jobs):
        for index, event in enumerate(step):
            if event is not None:
                events[index].append(event)
    assert [e["event"] for e in events[1]] == ["info", "error"]
    for found in (events[0], events[2]):
        assert found[0]["event"] == "info" and all(e["event"] == "segment" for e in found[1:])
    assert [e["start"] for e in events[2][1:]] == [0.0, 5.0]


def test_batch_calls_go_round_by_round_and_by_length(model: Path) -> None:
    """Pieces of several jobs: every job's n-th piece in round n, a round by length, batches bounded in
    size and padding; together they cover every piece once."""
    from servers.onnx import MAX_PADDING, OnnxAPI, OnnxConfig, _Piece, model_card, model_class, resolve_auto

    config = resolve_auto(OnnxConfig(model=str(model), max_batch_size=3))
    api = OnnxAPI(config, model_card(config, model_class(config)))
    rng = np.random.default_rng(0)
    pieces = [
        _Piece(job, number, 0, int(rng.integers(1_000, 100_000))) for job in range(7) for number in range(job % 3 + 1)
    ]
    batches = list(api._batches(pieces))
    assert sorted((p.job, p.number) for batch in batches for p in batch) == [(p.job, p.number) for p in pieces]
    rounds = [batch[0].number for batch in batches]
    assert rounds == sorted(rounds) and all(p.number == batch[0].number for batch in batches for p in batch)
    for batch in batches:
        assert 1 <= len(batch) <= 3
        assert [len(p) for p in batch] == sorted(len(p) for p in batch)
        assert len(batch) == 1 or len(batch[-1]) * len(batch) <= (1 + MAX_PADDING) * sum(map(len, batch))


def test_router_serves_an_onnx_model_beside_faster_whisper(model: Path, tmp_path: Path) -> None:
    entry = {"id": "tiny-onnx", "family": "onnx", "source": str(model), "options": {"vad": False}}
    config = served_beside_whisper(tmp_path, entry)
    assert (config["kind"], config["vad"]) == ("timestamped", False)
