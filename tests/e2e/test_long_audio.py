"""Long recordings: memory bounded whatever the audio claims, windows cut at silences and decoded side
by side with text and times kept, chunking_strategy, cancellation when the client leaves, and admission
control. A real faster-whisper server on the bundled tiny.en, real speech from the corpus."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import numpy as np
import openai
import psutil
import pytest

from tests.e2e.test_errors import assert_openai_error
from tests.helpers import Clip, ServerProcess, beside_a_stream, corpus, stream_events, wer

LONG = {clip.id: clip for clip in corpus("long")}
LJ = next(clip for clip in LONG.values() if clip.id.startswith("lj"))  # one reader, 0.4 s between sentences
MAX_QUEUED = 400  # seconds: one long clip at a time, not two
CLIP = corpus("dev")[0]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's temporary folder, where it spools decoded audio."""
    return tmp_path_factory.mktemp("long-audio")


@pytest.fixture(scope="module")
def server(tmp: Path) -> Iterator[ServerProcess]:
    args = ("--max-queued-audio-seconds", str(MAX_QUEUED))
    with ServerProcess("servers/faster_whisper.py", *args, env={"TMPDIR": str(tmp)}, name="long-audio") as server:
        yield server


def spooled(tmp: Path) -> list[Path]:
    """The decoded audio the server holds now."""
    return [path for folder in tmp.glob("open-speech-server-*/audio") for path in folder.iterdir()]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)


def post(server: ServerProcess, content: bytes, content_type: str, **data: str | list[str]) -> httpx.Response:
    files = {"file": ("audio", content, content_type)}
    return httpx.post(
        server.url + "/v1/audio/transcriptions", files=files, data={"model": "whisper-1", **data}, timeout=600
    )


def manifest_sentences(clip_id: str) -> list[dict]:
    manifest = (LONG[clip_id].path.parent.parent / "manifest.jsonl").read_text().splitlines()
    return next(entry for entry in map(json.loads, manifest) if Path(entry["audio"]).stem == clip_id)["segments"]


def flac(samples: np.ndarray, rate: int) -> bytes:
    """Mono 16-bit FLAC at `rate` Hz (any rate FLAC allows, however odd)."""
    out = io.BytesIO()
    with av.open(out, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples.astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


class PeakMemory:
    """The largest summed RSS of a server's process tree while the block runs, sampled every 50 ms."""

    def __init__(self, server: ServerProcess) -> None:
        self.root = psutil.Process(server.process.pid)
        self.peak = 0
        self.done = threading.Event()

    def _sample(self) -> None:
        while not self.done.wait(0.05):
            total = 0
            for process in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a process that just ended
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)

    def __enter__(self) -> PeakMemory:
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.done.set()
        self.thread.join()


@pytest.mark.parametrize(
    ("content_type", "why"),
    [
        ("audio/pcm;rate=1", "a rate no speech has"),
        ("audio/pcm;rate=abc", "a rate that is no number"),
        ("audio/pcm;rate=1e9", "a rate that is no whole number"),
        ("audio/pcm;rate=1000000000", "a rate far too high"),
        ("audio/pcm;rate=16000;channels=0", "no channels"),
    ],
)
def test_raw_pcm_with_a_bad_rate_is_a_400(server: ServerProcess, content_type: str, why: str) -> None:
    response = post(server, bytes(16_000), content_type)
    assert_openai_error(response, 400, "file", "invalid_audio_format")
    assert post(server, CLIP.path.read_bytes(), "audio/flac").json()["text"]


def test_a_flac_at_1_hz_is_a_400_before_anything_is_decoded(server: ServerProcess) -> None:
    with PeakMemory(server) as memory:
        response = post(server, flac(np.zeros(8_000), rate=1), "audio/flac")  # 8000 "seconds" in 1 KB
    assert_openai_error(response, 400, "file", "invalid_audio_format")
    assert memory.peak < 1.5 * 2**30


def test_two_hours_of_silence_are_transcribed_in_bounded_memory(
    server: ServerProcess, tmp: Path, tmp_path: Path
) -> None:
    """A FLAC of 7100 s (1.3 MB; 230 MB of PCM): decoded into a spool file, no window decoded."""
    silence = tmp_path / "silence.flac"
    lavfi = ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "7100", "-c:a", "flac"]
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *lavfi, str(silence)], check=True)
    assert silence.stat().st_size < 2_000_000
    with PeakMemory(server) as memory:
        response = post(server, silence.read_bytes(), "audio/flac", response_format="verbose_json")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] == "" and body["segments"] == [] and body["duration"] == pytest.approx(7100, abs=0.1)
    assert memory.peak < 1.5 * 2**30, f"peak RSS of the server tree {memory.peak / 2**20:.0f} MiB"
    assert not spooled(tmp)  # the spooled audio is gone with its request


def test_long_audio_is_decoded_in_windows_with_its_times_in_place(client: openai.OpenAI) -> None:
    with LJ.path.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="verbose_json", timestamp_granularities=["word", "segment"]
        )
    assert wer([LJ.text], [result.text]) < 0.08
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    times = [t for s in result.segments for t in (s.start, s.end)]
    assert times == sorted(times) and times[-1] <= result.duration
    starts = np.array([w.start for w in result.words])
    assert (np.diff(starts) >= 0).all()
    # Windows are cut in the silences between sentences: every sentence starts where a word does.
    sentences = manifest_sentences(LJ.id)
    misses = [s["id"] for s in sentences if np.abs(starts - s["start"]).min() > 0.5]
    assert len(misses) <= len(sentences) // 10, misses


def test_chunking_strategy_auto_server_vad_and_bad_values(client: openai.OpenAI, server: ServerProcess) -> None:
    with LJ.path.open("rb") as f:
        auto = client.audio.transcriptions.create(model="whisper-1", file=f, chunking_strategy="auto")
    strategy = {"type": "server_vad", "threshold": 0.4, "prefix_padding_ms": 200, "silence_duration_ms": 300}
    with LJ.path.open("rb") as f:  # the SDK sends it flattened: chunking_strategy[type]=server_vad, ...
        vad = client.audio.transcriptions.create(model="whisper-1", file=f, chunking_strategy=strategy)
    with CLIP.path.open("rb") as f:  # a short clip, cut too when asked
        short = client.audio.transcriptions.create(model="whisper-1", file=f, chunking_strategy="auto")
    assert wer([LJ.text], [auto.text]) < 0.08 and wer([LJ.text], [vad.text]) < 0.08
    assert wer([CLIP.text], [short.text]) < 0.15
    for bad in ("loud", json.dumps({"type": "semantic"}), json.dumps({"type": "server_vad", "threshold": 2})):
        response = post(server, CLIP.path.read_bytes(), "audio/flac", chunking_strategy=bad)
        assert_openai_error(response, 400, "chunking_strategy", "invalid_value")


def test_streaming_sends_each_window_in_order(server: ServerProcess) -> None:
    events = [event for _, event in stream_events(server, LJ.path, "whisper-1", timeout=600)]
    deltas = [e for e in events if e["type"] == "transcript.text.delta"]
    done = events[-1]
    assert done["type"] == "transcript.text.done" and len(deltas) > 10
    assert "".join(d["delta"] for d in deltas) == done["text"]
    assert [int(d["segment_id"]) for d in deltas] == list(range(len(deltas)))
    assert wer([LJ.text], [done["text"]]) < 0.08


def test_a_client_that_leaves_stops_its_job(server: ServerProcess, tmp: Path) -> None:
    stream_events(server, LJ.path, "whisper-1", leave=True)  # it decodes; then we leave
    deadline = time.monotonic() + 60
    while "job stopped: its client left" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "job stopped: its client left" in server.log()
    assert not spooled(tmp)
    assert post(server, CLIP.path.read_bytes(), "audio/flac").json()["text"]


def test_too_much_audio_queued_gets_503_with_retry_after(server: ServerProcess) -> None:
    other = next(clip for clip in LONG.values() if clip is not LJ)
    assert LJ.duration + other.duration > MAX_QUEUED > max(LJ.duration, other.duration)
    second = functools.partial(post, server, other.path.read_bytes(), "audio/flac")
    refused, _ = beside_a_stream(server, LJ.path, "whisper-1", second)
    assert_openai_error(refused, 503, None, "audio_queue_full")
    assert int(refused.headers["retry-after"]) > 0
    assert wer([other.text], [second().json()["text"]]) < 0.15  # once the first is done, it is taken


def test_windows_of_concurrent_requests_share_batches() -> None:
    """Window batching, the GPU design, run on CPU: two long requests at once, their windows decoded in
    shared CTranslate2 batches, each request's text and times its own."""
    with ServerProcess("servers/faster_whisper.py", "--window-batch-size", "4", name="window-batches") as server:

        def transcribe(clip: Clip) -> dict:
            data = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
            response = post(server, clip.path.read_bytes(), "audio/flac", **data)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(2) as pool:
            results = dict(zip(LONG, pool.map(transcribe, LONG.values()), strict=True))
        metrics = httpx.get(server.url + "/metrics").text
    for clip_id, body in results.items():
        assert wer([LONG[clip_id].text], [body["text"]]) < 0.12
        times = [t for s in body["segments"] for t in (s["start"], s["end"])]
        assert times == sorted(times) and times[-1] <= body["duration"]
        starts = [w["start"] for w in body["words"]]
        assert starts == sorted(starts)
    batches = {
        sample.split("{")[0]: float(value)
        for sample, value in (line.split() for line in metrics.splitlines() if line.startswith("open_speech_window"))
    }
    assert batches["open_speech_window_batch_size_sum"] > batches["open_speech_window_batch_size_count"] > 0
