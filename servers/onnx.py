"""The ONNX family: `python servers/onnx.py --model istupakov/parakeet-tdt-0.6b-v2-onnx [--option value ...]`.

Serves one ONNX speech model through onnx-asr over onnxruntime, CPU-first: NeMo exports (Parakeet TDT,
RNNT, CTC, Canary), Whisper exports and the others onnx-asr knows. `--model` is a Hugging Face repo id
in onnx-asr's layout (downloaded into the HF cache), an onnx-asr model name (nemo-parakeet-tdt-0.6b-v2)
or a local folder (its config.json names the model type, else `--model-type`). Options come from
configs/onnx.yaml, OPEN_SPEECH_* variables and the command line.

onnx-asr does the work: log-mel preprocessing, the encoder, greedy TDT/RNNT/CTC/AED decoding with token
timestamps, and Silero VAD segmentation. This server adds what a server needs on top:

- Cross-request batching: every job LitServe batched together is cut into pieces (VAD speech segments,
  or fixed windows of `max_segment_seconds` without VAD), and the pieces of all jobs are recognized
  together: round by round across jobs (every job's first piece in the first round, so each gets its
  first text early), by length within a round, at most `max_batch_size` pieces and `MAX_PADDING` padding
  per onnx-asr batch call. Each decoded piece is one segment, sent at once (`stream=true` sees it as a delta),
  its times shifted back to their place in the request's audio; words come from the token timestamps.
- A batch that fails is retried piece by piece, so one bad request fails alone.
"""

if __name__ == "__main__" and __spec__ is None:  # run as a script: run as the module instead
    from servers import run_as_module

    run_as_module(__file__)

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx_asr
import onnxruntime as rt
from faster_whisper.vad import get_vad_model
from onnx_asr.asr import TimestampedResult
from onnx_asr.loader import create_asr_resolver
from onnx_asr.models.nemo import NemoConformerAED
from onnx_asr.models.silero import SileroVad
from onnx_asr.models.whisper import WhisperHf, WhisperOrt
from onnx_asr.utils import pad_list

from common.audio import SAMPLE_RATE
from common.config import TranscriptionConfig, load
from common.errors import model_failed
from common.jobs import TranscriptionJob, error_event, info_event, segment_event
from common.models import Capabilities, ModelCard
from common.transcript import Logprob, Segment, Word
from common.windows import plan
from specs.family import FamilyAPI, Step, batch_or_singly, packed
from specs.serving import configure_logging, serve

logger = logging.getLogger("open_speech.onnx")
CUDA = "CUDAExecutionProvider"
# Most padding one onnx-asr batch call may carry, as a fraction of its audio (see OnnxAPI._batches).
MAX_PADDING = 0.25
# Longer audio is cut at silences into windows this long at most, each split into pieces by onnx-asr's VAD.
WINDOW_SECONDS = 300.0


@dataclass
class OnnxConfig(TranscriptionConfig):
    model_type: str = ""
    quantization: str = ""
    threads: int = 0
    batch_timeout: float = 0.02
    vad: bool = True
    max_segment_seconds: float = 20.0


def resolve_auto(config: OnnxConfig) -> OnnxConfig:
    """Settle `auto`/0: CUDA when onnxruntime has its CUDA provider, else CPU; threads = cores."""
    device = config.device
    if device == "auto":
        device = "cuda" if CUDA in rt.get_available_providers() else "cpu"
    return replace(config, device=device, threads=config.threads or _cores())


def _cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def session_options(config: OnnxConfig) -> rt.SessionOptions:
    """`threads` intra-op threads that sleep when idle. onnxruntime's threads spin by default after each
    run, waiting for the next; here that burns the cores the API process needs to receive and decode the
    next uploads (measured in docs/benchmarks.md)."""
    options = rt.SessionOptions()
    options.intra_op_num_threads = config.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _source(config: OnnxConfig) -> tuple[str | None, Path | None]:
    """onnx-asr's (model, path): a local folder with its model type (None: read from config.json), else
    a hub repo id or onnx-asr model name."""
    if Path(config.model).is_dir():
        return config.model_type or None, Path(config.model)
    return config.model, None


def model_class(config: OnnxConfig) -> type:
    """The onnx-asr class that runs the model, read from its name or config.json, without loading weights."""
    model, path = _source(config)
    return create_asr_resolver(model, path).model_type


def kind_of(cls: type) -> str:
    if issubclass(cls, NemoConformerAED):
        return "aed"
    if issubclass(cls, WhisperOrt | WhisperHf):
        return "whisper"
    return "timestamped"  # transducer and CTC models: token timestamps


def model_card(config: OnnxConfig, cls: type) -> ModelCard:
    kind = kind_of(cls)
    return ModelCard(
        id=config.name or Path(config.model.rstrip("/")).name,
        family="onnx",
        aliases=tuple(a for a in config.aliases if a != config.name),
        # Canary translates; onnx-asr's Whisper has no translate task.
        capabilities=config.capabilities(Capabilities(translate=kind == "aed", word_timestamps=kind == "timestamped")),
        settings={**config.public(), "kind": kind, "onnx_class": cls.__name__},
    )


class BundledSileroVad(SileroVad):
    """onnx-asr's Silero VAD (its speech-segment merging, thresholds and options) run on the Silero model
    that faster-whisper ships, so VAD works offline without downloading istupakov/silero-vad-onnx.

    Only `_encode` differs: faster-whisper's export takes 512-sample frames with 64 samples of context
    (the same framing onnx-asr uses at 16 kHz) and gives one speech probability per frame.
    """

    def __init__(self) -> None:
        self._silero = get_vad_model()

    def _encode(
        self, waveforms: npt.NDArray[np.float32], sample_rate: int, hop_size: int, context_size: int
    ) -> Iterator[npt.NDArray[np.float32]]:
        if sample_rate != SAMPLE_RATE:
            raise ValueError("the bundled Silero VAD runs at 16 kHz only")
        padded = np.pad(waveforms, ((0, 0), (0, -waveforms.shape[1] % hop_size)))
        probs = np.stack([self._silero(row, hop_size, context_size).reshape(-1) for row in padded])
        yield from probs.T


@dataclass
class _Piece:
    """A stretch of one job's audio (samples), recognized as one batch item."""

    job: int
    number: int  # its place among its job's pieces
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


class OnnxAPI(FamilyAPI):
    config: OnnxConfig

    def setup(self, device: str) -> None:
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers = [(CUDA, {"device_id": int(device.partition(":")[2] or 0)}), *providers]
            # CUDA and cuDNN from NVIDIA's pip wheels (onnxruntime-gpu[cuda,cudnn]) are not on the loader's
            # path: load them first. Where they are missing, onnxruntime falls back to the CPU provider.
            rt.preload_dlls()
        model, path = _source(self.config)
        asr = onnx_asr.load_model(
            model,  # type: ignore[arg-type]
            path,
            quantization=self.config.quantization or None,
            sess_options=session_options(self.config),
            providers=providers,
        )
        self.asr = asr.asr  # onnx-asr's model, under its adapters: batches of padded 16 kHz arrays
        self.kind = kind_of(type(self.asr))
        self.told_language = self.kind == "aed"
        # Seconds per encoder frame: a token's timestamp is where its frame starts.
        self.frame = getattr(self.asr, "window_step", 0.01) * getattr(self.asr, "_subsampling_factor", 8)
        self.vad = BundledSileroVad() if self.config.vad else None
        encoder = getattr(self.asr, "_encoder", None)  # onnx-asr's encoder session, where the model has one
        logger.info(
            "loaded %s (%s%s) on %s with %d threads, vad %s",
            self.config.model,
            type(self.asr).__name__,
            f", {self.config.quantization}" if self.config.quantization else "",
            ", ".join(encoder.get_providers()) if isinstance(encoder, rt.InferenceSession) else device,
            self.config.threads,
            "on" if self.vad else "off",
        )

    # ---- one batch ----------------------------------------------------------------------------
    def transcribe_batch(self, jobs: list[TranscriptionJob]) -> Iterator[Step]:
        size = len(jobs)
        failure = error_event(model_failed())
        pieces: list[_Piece] = []
        failed: set[int] = set()
        first: list[tuple[int, dict[str, Any]]] = []
        for index, job in enumerate(jobs):
            try:
                spans = [
                    (window.start + start, window.start + end)
                    for window in plan(job.audio, WINDOW_SECONDS, job.chunking)
                    for start, end in self.split(job.audio.read(window.start, window.end))
                ]
            except Exception:
                logger.exception("voice activity detection failed")
                failed.add(index)
                first.append((index, failure))
                continue
            first.append((index, info_event(self.spoken_language(job), job.duration)))
            pieces.extend(_Piece(index, number, start, end) for number, (start, end) in enumerate(spans))
        yield from packed(size, first)
        counts = [0] * size
        for batch in self._batches(pieces):
            batch = [p for p in batch if p.job not in failed and not jobs[p.job].audio.cancelled]
            events: list[tuple[int, dict[str, Any]]] = []
            for piece, result in batch_or_singly(batch, lambda group: self._recognize(group, jobs), "recognition"):
                if piece.job in failed:
                    continue
                if result is None:
                    failed.add(piece.job)
                    events.append((piece.job, failure))
                    continue
                segment = self._segment(piece, result, counts[piece.job], jobs[piece.job].logprobs)
                if segment is not None:
                    counts[piece.job] += 1
                    events.append((piece.job, segment_event(segment)))
            yield from packed(size, events)

    def _batches(self, pieces: list[_Piece]) -> Iterator[list[_Piece]]:
        """The pieces in onnx-asr batch calls, round by round: round n holds every request's n-th piece, so
        each request's segments come in order and its first early. Within a round, pieces go by length and
        a batch is closed at `max_batch_size` pieces or before its padding would pass `MAX_PADDING` of its
        audio: padded samples cost as much encoder work as speech."""
        rounds: dict[int, list[_Piece]] = {}
        for piece in pieces:
            rounds.setdefault(piece.number, []).append(piece)
        for number in sorted(rounds):
            batch: list[_Piece] = []
            for piece in sorted(rounds[number], key=len):  # each piece is the longest of its batch so far
                padded = len(piece) * (len(batch) + 1)
                if batch and (
                    len(batch) == self.max_batch_size
                    or padded > (1 + MAX_PADDING) * (sum(map(len, batch)) + len(piece))
                ):
                    yield batch
                    batch = []
                batch.append(piece)
            yield batch

    def split(self, audio: np.ndarray) -> list[tuple[int, int]]:
        """Sample spans to recognize: speech segments (at most `max_segment_seconds`) found by onnx-asr's
        VAD, or fixed windows of `max_segment_seconds` without VAD."""
        window = max(1, int(self.config.max_segment_seconds * SAMPLE_RATE))
        if self.vad is None:
            return [(start, min(start + window, len(audio))) for start in range(0, len(audio), window)]
        (spans,) = self.vad.segment_batch(
            audio[None, :].astype(np.float32),
            np.array([len(audio)], dtype=np.int64),
            SAMPLE_RATE,
            max_speech_duration_s=self.config.max_segment_seconds,
        )
        return list(spans)

    def _recognize(self, pieces: list[_Piece], jobs: list[TranscriptionJob]) -> list[TimestampedResult]:
        """One onnx-asr batch call per distinct set of decoding options (only Canary and Whisper have any)."""
        groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
        for row, piece in enumerate(pieces):
            groups.setdefault(tuple(self._options(jobs[piece.job]).items()), []).append(row)
        results: list[TimestampedResult | None] = [None] * len(pieces)
        for options, rows in groups.items():
            audio = [jobs[pieces[r].job].audio.read(pieces[r].start, pieces[r].end) for r in rows]
            found = self.asr.recognize_batch(*pad_list(audio), need_logprobs=True, **dict(options))
            for row, result in zip(rows, found, strict=True):
                results[row] = result
        return results  # type: ignore[return-value]

    def _options(self, job: TranscriptionJob) -> dict[str, Any]:
        if self.kind == "aed":
            source = self.spoken_language(job)
            target = "en" if job.task == "translate" else job.target_language or source
            return {"language": source, "target_language": target}
        if self.kind == "whisper" and job.language:
            return {"language": job.language}
        return {}

    def _segment(self, piece: _Piece, result: TimestampedResult, number: int, logprobs: bool) -> Segment | None:
        """The piece's text as one segment at its place in the request's audio, with its words (and its
        tokens' log probabilities, when asked)."""
        if not result.text.strip():
            return None
        offset, end = piece.start / SAMPLE_RATE, piece.end / SAMPLE_RATE
        words = None
        if result.timestamps is not None and result.tokens is not None:
            words = _words(result.tokens, result.timestamps, offset, end, self.frame)
        scores = result.logprobs or []
        return Segment(
            id=number,
            start=offset,
            end=end,
            text=" " + result.text.strip(),
            # Rounded: padding in a batch moves the logits by float noise (~1e-7).
            avg_logprob=round(float(np.mean(scores)), 4) if scores else 0.0,
            words=words,
            logprobs=[Logprob(t, round(p, 4)) for t, p in zip(result.tokens or (), scores, strict=False)]
            if logprobs
            else None,
        )


def _words(tokens: list[str], stamps: list[float], offset: float, end: float, frame: float) -> list[Word]:
    """Words from token timestamps: a token that starts with a space starts a word. A word lasts from
    its first token's frame to the end of its last token's frame (or the next word's start), clamped
    to the piece."""
    spans: list[tuple[str, float, float]] = []
    for token, stamp in zip(tokens, stamps, strict=True):
        start = min(offset + stamp, end)
        if spans and not token.startswith(" "):
            text, first, _ = spans[-1]
            spans[-1] = (text + token, first, start)
        else:
            spans.append((token.strip(), start, start))
    words = []
    for number, (text, start, last) in enumerate(spans):
        stop = min(last + frame, end)
        if number + 1 < len(spans):
            stop = min(stop, spans[number + 1][1])
        if text:
            words.append(Word(" " + text, round(start, 3), round(max(start, stop), 3)))
    return words


def main(argv: list[str] | None = None) -> None:
    config = resolve_auto(load(OnnxConfig, "onnx", argv))
    configure_logging(config.log_level)
    if not config.model:
        raise SystemExit(
            "servers/onnx.py needs --model: a Hugging Face repo id (istupakov/parakeet-tdt-0.6b-v2-onnx), "
            "an onnx-asr model name or a local folder"
        )
    api = OnnxAPI(config, model_card(config, model_class(config)))  # workers load the weights
    serve(api, config, config.device, "1")


if __name__ == "__main__":
    main()
