"""The NVIDIA NeMo family: `python servers/nemo.py --model nvidia/parakeet-tdt-0.6b-v2 [--option value ...]`.

Serves one NeMo ASR model, from the Hugging Face cache (`from_pretrained`) or a local `.nemo` file
(`restore_from`). Options come from configs/nemo.yaml, OPEN_SPEECH_* variables and the command line.

- Parakeet and other transducer (TDT, RNNT, hybrid) and CTC models: the requests LitServe batches
  together run as one padded batch through preprocessor -> encoder -> greedy batch decoding (with
  CUDA graphs on GPU), with word and segment timestamps. Audio longer than `chunk_seconds` is cut
  into windows decoded in the same batch, their times shifted back into place. Transducers boost a
  request's `keywords` with NeMo's per-stream biasing (a boosting tree per keyword set, in the same batch);
  CTC models, Canary and the streaming paths ignore keywords.
- Canary (`EncDecMultiTaskModel`): one batch with a prompt per request: `language` is the source,
  `/v1/audio/translations` targets English, the `target_language` form field any other language.
- Cache-aware streaming models: `stream=true` requests are decoded chunk by chunk with
  `conformer_stream_step` (see servers/nemo_streaming.py), several streams in one batch, each step's
  new text sent as it is produced; other requests take the offline path.
- Live streams (cache-aware models, the router's Realtime WebSocket): a request with `live_id` carries
  only the audio that arrived since the last one; the worker keeps that stream's caches and hypothesis
  between requests, steps every live stream of the batch together, and answers with the stream's text
  so far. `live_final` ends the stream; one left idle for `live_idle_seconds` is dropped. Live streams
  live in one worker process: serve such a model with one worker (`workers_per_device: 1`).
- Sortformer diarizers (`SortformerEncLabelModel`: nvidia/diar_sortformer_4spk-v1, and the streaming
  ones, run over the whole recording): served as a diarizer instead, on `POST /v1/audio/diarizations`
  (see `specs.diarization`). The recordings of a batch go through the model as one padded batch; each
  speaker's per-frame activity becomes turns as NeMo's `diarize()` makes them, lettered in order of first
  appearance, or named after the voices a request enrols (`known_speaker_references[]`), which Sortformer
  cannot take: the bundled diarizer's voice encoder matches them.
"""

if __name__ == "__main__" and __spec__ is None:  # run as a script: run as the module instead
    from servers import run_as_module

    run_as_module(__file__)

import copy
import itertools
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from nemo.collections.asr.models import (
    ASRModel,
    EncDecCTCModel,
    EncDecMultiTaskModel,
    EncDecRNNTModel,
    SortformerEncLabelModel,
)
from nemo.collections.asr.parts.context_biasing import BoostingTreeModelConfig, GPUBoostingTreeModel
from nemo.collections.asr.parts.context_biasing.biasing_multi_model import BiasingRequestItemConfig
from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis
from nemo.collections.asr.parts.utils.speaker_utils import merge_float_intervals
from nemo.collections.asr.parts.utils.timestamp_utils import process_timestamp_outputs
from nemo.collections.asr.parts.utils.vad_utils import PostProcessingParams, ts_vad_post_processing
from nemo.collections.common.tokenizers import TokenizerSpec
from nemo.core import ModelPT
from nemo.core.utils.optional_libs import TRITON_AVAILABLE
from nemo.utils import logging as nemo_logging
from nemo.utils.model_utils import import_class_by_path
from omegaconf import DictConfig, OmegaConf, open_dict

from common.audio import SAMPLE_RATE
from common.config import TranscriptionConfig, load
from common.errors import ApiError, model_failed
from common.jobs import TranscriptionJob, error_event, info_event, segment_event
from common.models import DIARIZE_ONLY, Capabilities, ModelCard
from common.speakers import Turn, letters
from common.transcript import Segment, Word
from common.windows import plan
from servers.diarization import BundledDiarizer
from servers.nemo_streaming import LiveStream, step_round
from specs.diarization import DiarizationJob
from specs.family import DiarizerAPI, FamilyAPI, Step, batch_or_singly, only
from specs.serving import configure_logging, serve

logger = logging.getLogger("open_speech.nemo")
AED_CHUNK_SECONDS = 40.0  # Canary is trained on utterances up to 40 s
FULL_ATTENTION_CHUNK_SECONDS = 600.0
STREAMING_FAILED = ApiError(500, "The model failed while streaming.", code="model_error")
VOICE_SECONDS = 30  # of a Sortformer speaker's speech, embedded to match it to the voices a request enrols


@dataclass
class NemoConfig(TranscriptionConfig):
    devices: str = "auto"
    workers_per_device: int = 1
    dtype: str = "auto"
    max_batch_size: int = 16
    batch_timeout: float = 0.02
    chunk_seconds: float = 0.0
    lookahead_ms: int = 1120
    live_idle_seconds: float = 120.0
    pnc: bool = True


def resolve_auto(config: NemoConfig) -> NemoConfig:
    """Settle `auto`: CUDA when torch sees a GPU, with bfloat16 where supported (else float16); CPU float32."""
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = config.dtype
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return replace(config, device=device, dtype=dtype)


def load_model(source: str, device: str) -> ModelPT:
    """A local .nemo file through `restore_from`, else a Hugging Face id through `from_pretrained`."""
    if source.endswith(".nemo") and Path(source).is_file():
        return ASRModel.restore_from(source, map_location=device)
    return ASRModel.from_pretrained(source, map_location=device)


def read_config(source: str) -> DictConfig:
    """The model's saved configuration, without loading its weights."""
    if source.endswith(".nemo") and Path(source).is_file():
        return ASRModel.restore_from(source, map_location="cpu", return_config=True)
    return ASRModel.from_pretrained(source, map_location="cpu", return_config=True)


def kind_of(cls: type) -> str:
    if issubclass(cls, SortformerEncLabelModel):
        return "diarizer"
    if issubclass(cls, EncDecMultiTaskModel):
        return "aed"
    if issubclass(cls, EncDecRNNTModel):  # TDT, RNNT, and hybrid RNNT-CTC models (their RNNT head)
        return "transducer"
    if issubclass(cls, EncDecCTCModel):
        return "ctc"
    raise ValueError(f"unsupported NeMo model class {cls.__name__}")


def is_cache_aware(cfg: DictConfig) -> bool:
    return cfg.encoder.get("att_context_style") == "chunked_limited"


def per_stream_biasing(model: ASRModel, decoding: DictConfig, device: str) -> bool:
    """Whether the transducer's decoding can boost keywords per request: NeMo does it only in label-looping
    greedy batch decoding. On CUDA it needs Triton, else NeMo turns CUDA graphs off for every batch."""
    return (
        decoding.get("strategy") == "greedy_batch"
        and "greedy" in decoding
        and decoding.greedy.get("loop_labels", True)
        and getattr(model.decoder, "blank_as_pad", False)
        and (device == "cpu" or TRITON_AVAILABLE)
    )


@lru_cache(maxsize=64)
def boosting_tree(tokenizer: TokenizerSpec, keywords: tuple[str, ...]) -> GPUBoostingTreeModel | None:
    """The boosting tree (NeMo's default scores) of the keywords the tokenizer spells without `<unk>`, whose
    boost would make the model write ⁇; None if none. Kept: a client tends to send the same set again."""
    unk = getattr(tokenizer, "unk_id", None)  # aggregate tokenizers have none (nor a single vocabulary)
    spelled = [k for k in keywords if unk is None or unk not in tokenizer.text_to_ids(k)]
    if not spelled:
        return None
    return GPUBoostingTreeModel.from_config(BoostingTreeModelConfig(key_phrases_list=spelled), tokenizer)


class _BiasingRequest(Hypothesis):
    """An empty hypothesis asking the batch decoder to boost its row with a boosting model.

    The decoder merges the row's decoded hypothesis into it (`merge_`), which drops TDT token durations
    (and so timestamps): being empty, it takes the decoded hypothesis whole instead.
    """

    def merge_(self, other: Hypothesis) -> Hypothesis:
        vars(self).update(vars(other))
        return self


def model_card(config: NemoConfig, cfg: DictConfig) -> ModelCard:
    kind = kind_of(import_class_by_path(cfg.target))
    return ModelCard(
        id=config.name or Path(config.model).stem,
        family="nemo",
        aliases=tuple(a for a in config.aliases if a != config.name),
        capabilities=DIARIZE_ONLY if kind == "diarizer" else config.capabilities(_transcriber(kind, cfg)),
        settings={**config.public(), "kind": kind, "cache_aware": is_cache_aware(cfg)},
    )


def _transcriber(kind: str, cfg: DictConfig) -> Capabilities:
    """What an ASR model can do, as its class and config tell."""
    languages = tuple(lang for lang in cfg.tokenizer.get("langs", {}) if lang != "spl_tokens")
    return Capabilities(
        languages=languages if kind == "aed" else None,
        translate=kind == "aed",
        word_timestamps=kind != "aed",
        live=is_cache_aware(cfg),
    )


@dataclass
class _Piece:
    """A window of one job's audio, decoded as one batch item."""

    job: int
    audio: np.ndarray
    offset: float


class NemoAPI(FamilyAPI):
    config: NemoConfig

    def setup(self, device: str) -> None:
        nemo_logging.setLevel(logging.WARNING)
        self.device = torch.device(device)
        self.dtype = getattr(torch, self.config.dtype)
        model = load_model(self.config.model, device)
        self.kind = kind_of(type(model))
        self.told_language = self.kind == "aed"
        # Streaming steps merge hypotheses across chunks, which fails once timestamps are computed:
        # keep the decoding without them for conformer_stream_step.
        self.stream_decoding = getattr(model, "decoding", None)
        if self.kind in ("transducer", "ctc"):
            decoding = copy.deepcopy(model.cfg.decoding)
            with open_dict(decoding):
                decoding.compute_timestamps = True
                if self.kind == "transducer" and per_stream_biasing(model, decoding, device):
                    decoding.greedy.enable_per_stream_biasing = True
            model.change_decoding_strategy(decoding, verbose=False)
        # The transducer decoder's multi-model, where each batch's boosting trees are added (None: no keywords).
        self.biasing = getattr(getattr(model.decoding.decoding, "decoding_computer", None), "biasing_multi_model", None)
        self.cache_aware = is_cache_aware(model.cfg)
        self.live: dict[str, LiveStream] = {}  # live streams by id, kept between requests
        if self.cache_aware:
            right = self.config.lookahead_ms // 80 - 1
            contexts = [list(c) for c in model.encoder.att_context_size_all]
            context = next((c for c in contexts if c[1] == right), None)
            if context is None:
                raise ValueError(
                    f"lookahead_ms {self.config.lookahead_ms} is not one of this model's: "
                    f"{[(c[1] + 1) * 80 for c in contexts]}"
                )
            model.encoder.set_default_att_context_size(context)
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.chunk_seconds = self.config.chunk_seconds or (
            AED_CHUNK_SECONDS if self.kind == "aed" else FULL_ATTENTION_CHUNK_SECONDS
        )
        logger.info(
            "loaded %s (%s%s) on %s as %s",
            self.config.model,
            self.kind,
            ", cache-aware" if self.cache_aware else "",
            device,
            self.config.dtype,
        )

    # ---- one batch ----------------------------------------------------------------------------
    def transcribe_batch(self, jobs: list[TranscriptionJob]) -> Iterator[Step]:
        live = [i for i, job in enumerate(jobs) if job.live is not None]
        if live:
            yield from self._live(jobs, live)
        streaming = [i for i, job in enumerate(jobs) if job.stream and self.cache_aware and i not in live]
        offline = [i for i in range(len(jobs)) if i not in streaming and i not in live]
        for index, events in self._offline(jobs, offline):
            for event in events:
                yield only(len(jobs), index, event)
        if streaming:
            yield from self._streaming(jobs, streaming)

    def _offline(self, jobs: list[TranscriptionJob], indices: list[int]) -> Iterator[tuple[int, list[dict]]]:
        """Decode the jobs at `indices` together; a batch that fails is retried job by job."""
        decoded = batch_or_singly(indices, lambda batch: self._decode([jobs[i] for i in batch]), "transcription")
        for i, segments in decoded:
            if segments is None:
                yield i, [error_event(model_failed())]
                continue
            job = jobs[i]
            yield i, [info_event(self.spoken_language(job), job.duration), *(segment_event(s) for s in segments)]

    def _decode(self, jobs: list[TranscriptionJob]) -> list[list[Segment]]:
        """Every window of the jobs, `max_batch_size` at a time; each batch's audio is read when it runs,
        and a job whose client left is dropped there."""
        windows = [(j, w) for j, job in enumerate(jobs) for w in plan(job.audio, self.chunk_seconds, job.chunking)]
        segments: list[list[Segment]] = [[] for _ in jobs]
        for first in range(0, len(windows), self.max_batch_size):
            batch = [
                _Piece(j, jobs[j].audio.read(w.start, w.end), w.offset)
                for j, w in windows[first : first + self.max_batch_size]
                if not jobs[j].audio.cancelled
            ]
            if not batch:
                continue
            for piece, found in zip(batch, self._decode_pieces(batch, jobs), strict=True):
                segments[piece.job].extend(found)
        for found in segments:
            for number, segment in enumerate(found):
                segment.id = number
        return segments

    def _decode_pieces(self, pieces: list[_Piece], jobs: list[TranscriptionJob]) -> list[list[Segment]]:
        lengths = torch.tensor([len(p.audio) for p in pieces])
        signal = torch.zeros(len(pieces), int(lengths.max()))
        for row, piece in enumerate(pieces):
            signal[row, : len(piece.audio)] = torch.from_numpy(piece.audio)
        signal, lengths = signal.to(self.device), lengths.to(self.device)
        with self._biasing([jobs[p.job].keywords for p in pieces]) as requests, torch.inference_mode():
            if self.kind == "aed":
                prompts = [self._prompt(jobs[p.job]) for p in pieces]
                return [
                    [Segment(id=0, start=p.offset, end=p.offset + len(p.audio) / SAMPLE_RATE, text=" " + h.text)]
                    if h.text
                    else []
                    for p, h in zip(pieces, self._decode_aed(signal, lengths, prompts), strict=True)
                ]
            # NeMo's timestamps cost about as much as the greedy decoding itself: only for batches that want them.
            timestamps = self.model.decoding.compute_timestamps = any(jobs[p.job].timestamps for p in pieces)
            mel, mel_lengths = self.model.preprocessor(input_signal=signal, length=lengths)
            encoded, encoded_lengths = self.model.encoder(audio_signal=mel.to(self.dtype), length=mel_lengths)
            if self.kind == "transducer":
                hyps = self.model.decoding.rnnt_decoder_predictions_tensor(
                    encoder_output=encoded,
                    encoded_lengths=encoded_lengths,
                    return_hypotheses=True,
                    partial_hypotheses=requests,
                )
            else:
                log_probs = self.model.decoder(encoder_output=encoded)
                hyps = self.model.decoding.ctc_decoder_predictions_tensor(
                    log_probs, decoder_lengths=encoded_lengths, return_hypotheses=True
                )
        if timestamps:
            hyps = process_timestamp_outputs(
                hyps, self.model.encoder.subsampling_factor, self.model.cfg.preprocessor.window_stride
            )
        return [
            _segments(h, p.offset, p.offset + len(p.audio) / SAMPLE_RATE) for p, h in zip(pieces, hyps, strict=True)
        ]

    @contextmanager
    def _biasing(self, keywords: list[tuple[str, ...]]) -> Iterator[list[Hypothesis | None] | None]:
        """Each row's biasing request (None: not boosted) for the transducer's batch decoder, or None for
        no boosting at all. Each distinct keyword set's tree is in the multi-model for this batch only."""
        if self.biasing is None or not any(keywords):
            yield None
            return
        requests: dict[tuple[str, ...], BiasingRequestItemConfig] = {}
        try:
            for words in dict.fromkeys(k for k in keywords if k):
                tree = boosting_tree(self.model.tokenizer, words)
                if tree is not None:
                    requests[words] = BiasingRequestItemConfig(multi_model_id=self.biasing.add_model(tree))
            yield [_BiasingRequest.empty_with_biasing_cfg(requests[k]) if k in requests else None for k in keywords]
        finally:
            for request in requests.values():
                request.remove_from_multi_model(self.biasing)

    def _decode_aed(self, signal: torch.Tensor, lengths: torch.Tensor, prompts: list[torch.Tensor]) -> list:
        """Canary: one encoder pass; decoding grouped by prompt length (prompts of a group stack)."""
        _, _, states, mask = self.model(input_signal=signal, input_signal_length=lengths)
        hyps: list = [None] * len(prompts)
        by_length: dict[int, list[int]] = {}
        for row, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(row)
        for rows in by_length.values():
            found = self.model.decoding.decode_predictions_tensor(
                encoder_hidden_states=states[rows],
                encoder_input_mask=mask[rows],
                decoder_input_ids=torch.stack([prompts[r] for r in rows]).to(self.device),
                return_hypotheses=True,
            )
            for row, hyp in zip(rows, found, strict=True):
                hyps[row] = hyp
        return hyps

    def _prompt(self, job: TranscriptionJob) -> torch.Tensor:
        source = self.spoken_language(job)
        target = job.target_language or ("en" if job.task == "translate" else source)
        slots = self.model.prompt.get_default_dialog_slots()[0]["slots"] | {
            "source_lang": source,
            "target_lang": target,
            "pnc": "yes" if self.config.pnc else "no",
        }
        return self.model.prompt.encode_dialog(turns=[{"role": "user", "slots": slots}])["context_ids"]

    # ---- streaming ----------------------------------------------------------------------------
    def _streaming(self, jobs: list[TranscriptionJob], indices: list[int]) -> Iterator[Step]:
        streams = [LiveStream(self.model) for _ in indices]
        for stream, i in zip(streams, indices, strict=True):
            yield only(len(jobs), i, info_event(self.spoken_language(jobs[i]), jobs[i].duration))
            stream.push(jobs[i].audio.read(), last=True)
        counts = [0] * len(indices)
        while not all(s.done for s in streams):
            starts = [s.seconds_fed for s in streams]
            try:
                deltas = self._step(streams)
            except Exception:
                logger.exception("streaming step failed")
                for stream, i in zip(streams, indices, strict=True):
                    if not stream.done:
                        stream.done = True
                        yield only(len(jobs), i, error_event(STREAMING_FAILED))
                return
            if not deltas:
                break
            for position, text in deltas.items():
                if text:
                    stream = streams[position]
                    segment = Segment(id=counts[position], start=starts[position], end=stream.seconds_fed, text=text)
                    counts[position] += 1
                    yield only(len(jobs), indices[position], segment_event(segment))

    def _step(self, streams: list[LiveStream]) -> dict[int, str]:
        """One `step_round`, with the decoding that computes no timestamps (see `setup`)."""
        offline_decoding, self.model.decoding = self.model.decoding, self.stream_decoding
        try:
            return step_round(self.model, streams, self.dtype, self.device)
        finally:
            self.model.decoding = offline_decoding

    def _live(self, jobs: list[TranscriptionJob], indices: list[int]) -> Iterator[Step]:
        """Continue each job's live stream with its new audio; answer with each stream's text so far."""
        now = time.monotonic()
        for stream_id, stream in list(self.live.items()):
            if now - stream.last_used > self.config.live_idle_seconds:
                del self.live[stream_id]  # abandoned by its session
        streams = []
        for i in indices:
            live = jobs[i].live
            if live.id not in self.live:
                self.live[live.id] = LiveStream(self.model)
            stream = self.live[live.id]
            stream.last_used = now
            stream.push(jobs[i].audio.read(), last=live.final)
            streams.append(stream)
        try:
            while self._step(streams):
                pass  # every stream of the batch steps while it has a whole chunk
        except Exception:
            logger.exception("live streaming step failed")
            for i in indices:
                self.live.pop(jobs[i].live.id, None)
                yield only(len(jobs), i, error_event(STREAMING_FAILED))
            return
        for i, stream in zip(indices, streams, strict=True):
            if jobs[i].live.final:
                self.live.pop(jobs[i].live.id, None)
            yield only(len(jobs), i, info_event(self.spoken_language(jobs[i]), stream.seconds_fed))
            if stream.text:
                segment = Segment(id=0, start=0.0, end=stream.seconds_fed, text=" " + stream.text)
                yield only(len(jobs), i, segment_event(segment))


class SortformerAPI(DiarizerAPI):
    """A Sortformer as a diarizer: per-frame activity of up to 4 speakers (several at once where they
    overlap), for the recordings of a batch in one padded batch, then NeMo's post-processing of it."""

    config: NemoConfig

    def setup(self, device: str) -> None:
        nemo_logging.setLevel(logging.WARNING)
        self.device = torch.device(device)
        self.dtype = getattr(torch, self.config.dtype)
        self.model = load_model(self.config.model, device).to(self.device, dtype=self.dtype).eval()
        # diarize()'s default post-processing: a speaker speaks where its activity is over 0.5.
        self.postprocessing = OmegaConf.structured(PostProcessingParams())
        self.voices = BundledDiarizer()  # Sortformer enrols no voices: the bundled encoder matches them
        logger.info("loaded %s (Sortformer diarizer) on %s as %s", self.config.model, device, self.config.dtype)

    def prepare(self, job: DiarizationJob) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The recording, and its known voices' embeddings."""
        known = {speaker.name: self.voices.embed(speaker.audio) for speaker in job.known}
        return job.audio.read(), known

    def diarize(self, prepared: list[tuple[np.ndarray, dict[str, np.ndarray]]]) -> list[list[Turn]]:
        activity = self._activity([audio for audio, _ in prepared])
        return [self._turns(frames, audio, known) for frames, (audio, known) in zip(activity, prepared, strict=True)]

    def _activity(self, recordings: list[np.ndarray]) -> list[torch.Tensor]:
        """Each recording's speaker activity (frames, speakers), in [0, 1], one frame per 80 ms."""
        lengths = torch.tensor([len(audio) for audio in recordings])
        signal = torch.zeros(len(recordings), int(lengths.max()))
        for row, audio in enumerate(recordings):
            samples = torch.from_numpy(audio)
            # The offline model's forward scales its input by the peak of the whole batch: here each
            # recording by its own, as when diarized alone (streaming models take it as it is).
            signal[row, : len(audio)] = (
                samples if self.model.streaming_mode else samples / (samples.max() + self.model.eps)
            )
        with torch.inference_mode():
            mel, mel_lengths = self.model.preprocessor(
                input_signal=signal.to(self.device), length=lengths.to(self.device)
            )
            mel = mel[:, :, : int(mel_lengths.max())].to(self.dtype)
            if self.model.streaming_mode:  # chunk by chunk, with its cache of each speaker's voice: any length
                activity = self.model.forward_streaming(mel, mel_lengths)
                frames = torch.ceil(mel_lengths / self.model.encoder.subsampling_factor).long()
            else:
                embeddings, frames = self.model.frontend_encoder(
                    processed_signal=mel, processed_signal_length=mel_lengths
                )
                activity = self.model.forward_infer(embeddings, frames)
        return [rows[:count].float().cpu() for rows, count in zip(activity, frames.tolist(), strict=True)]

    def _turns(self, activity: torch.Tensor, audio: np.ndarray, known: dict[str, np.ndarray]) -> list[Turn]:
        """Turns in time order, as `diarize()` finds them (each speaker's speech post-processed, rounded to
        10 ms and merged), clamped to the audio; speakers lettered, or named after `known` voices."""
        duration = len(audio) / SAMPLE_RATE
        spans = []
        for speaker in range(activity.shape[1]):
            found = ts_vad_post_processing(
                activity[:, speaker], self.postprocessing, unit_10ms_frame_count=self.model.encoder.subsampling_factor
            )
            rounded = [[round(start, 2), round(end, 2)] for start, end in found.tolist()]
            spans += [(start, min(end, duration), speaker) for start, end in merge_float_intervals(rounded)]
        spans = sorted(span for span in spans if span[0] < span[1])
        order = list(dict.fromkeys(speaker for _, _, speaker in spans))  # in order of first appearance
        if known:
            names = self.voices.name([_voice(audio, spans, speaker) for speaker in order], known)
        else:
            names = list(itertools.islice(letters(), len(order)))
        label = dict(zip(order, names, strict=True))
        return [Turn(start, end, label[speaker]) for start, end, speaker in spans]


def _voice(audio: np.ndarray, spans: list[tuple[float, float, int]], speaker: int) -> np.ndarray:
    """Up to VOICE_SECONDS of one speaker's speech: its turns' samples, end to end."""
    pieces = [
        audio[round(start * SAMPLE_RATE) : round(end * SAMPLE_RATE)] for start, end, who in spans if who == speaker
    ]
    return np.concatenate(pieces)[: VOICE_SECONDS * SAMPLE_RATE]


def _segments(hyp: object, offset: float, end_of_audio: float) -> list[Segment]:
    """Segments with their words, from a hypothesis with NeMo's timestamps (seconds), shifted by `offset`.

    Times are clamped to the audio: frames are 80 ms and a last token's duration can reach past the end.
    """
    stamps = hyp.timestamp if isinstance(getattr(hyp, "timestamp", None), dict) else {}  # else frames, not times

    def at(seconds: object) -> float:
        return min(offset + float(seconds), end_of_audio)

    words = [Word(" " + w["word"], at(w["start"]), at(w["end"])) for w in stamps.get("word", [])]
    found = []
    for s in stamps.get("segment", []):
        start, end = at(s["start"]), at(s["end"])
        inside = [w for w in words if start - 1e-6 <= w.start and w.end <= end + 1e-6]
        found.append(Segment(id=0, start=start, end=end, text=" " + s["segment"], words=inside))
    if "".join(s.text for s in found).split() != hyp.text.split():
        # No segments, or segments that do not spell the text (a word holding a segment delimiter):
        # one segment, so that the transcript is exactly the model's text.
        start = words[0].start if words else offset
        end = words[-1].end if words else offset
        found = [Segment(id=0, start=start, end=end, text=" " + hyp.text, words=words)] if hyp.text else []
    return found


def main(argv: list[str] | None = None) -> None:
    config = resolve_auto(load(NemoConfig, "nemo", argv))
    configure_logging(config.log_level)
    if not config.model:
        raise SystemExit(
            "servers/nemo.py needs --model: a Hugging Face id (nvidia/parakeet-tdt-0.6b-v2) or a .nemo file"
        )
    card = model_card(config, read_config(config.model))  # workers load the weights
    # torch's OpenMP threads spin while they wait for work: between a server's batches that spinning cost
    # several times the decoding itself (docs/benchmarks.md). The workers, started next, read this as
    # torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    api = (SortformerAPI if card.settings["kind"] == "diarizer" else NemoAPI)(config, card)
    serve(api, config, config.device, config.devices, config.workers_per_device)


if __name__ == "__main__":
    main()
