"""The diarization family: `python servers/diarization.py [--option value ...]`, who spoke when.

Serves `POST /v1/audio/diarizations` (see `specs.diarization`) with the bundled diarizer, offline on the
CPU, as `diarizer`; or, given `--model pyannote/speaker-diarization-community-1` (a Hugging Face repo id of
a pyannote.audio pipeline, or a local folder of one), with pyannote.audio. Options come from
configs/diarization.yaml, OPEN_SPEECH_* variables and the command line.

The bundled diarizer: Resemblyzer's GE2E voice encoder (an LSTM over mel frames, giving L2-normalised
voice embeddings) is the one speaker model whose weights load here without a network: they ship in its
PyPI wheel (`resemblyzer/pretrained.pt`). The package itself pulls in torch, librosa and webrtcvad, so
it is installed without its dependencies and only its weights are used: read from the legacy torch
pickle without torch, with the network and its mel front end (librosa's, to float32 rounding) in numpy.

Diarizing: Silero VAD (the ONNX model faster-whisper ships) finds speech; short windows tile each
speech region and are embedded; agglomerative clustering on cosine distance, cut at a distance rather
than at a speaker count, finds the speakers; each window's stretch of speech goes to its speaker, and
one speaker's stretches in a row, padded a little into the silence around them, are a turn. A speaker
whose voice is like enough one the request enrolled (`known_speaker_references[]`) takes its name.

Cross-request batching: the windows of every recording LitServe batched together go through the
encoder together (the LSTM's cost is mostly per step, whatever the rows); VAD, clustering and naming
are per recording. A batch that fails is retried recording by recording, so one bad request fails alone.

pyannote.audio (`bash .ci/setup.sh pyannote`; torch and pyannote are imported only for it): its pipeline
(community-1's: segmentation, WeSpeaker embeddings, VBx clustering on a PLDA) runs on each recording's
decoded samples, one recording at a time; known voices are embedded by the pipeline's own embedding model
and named by the same matching as the bundled diarizer's, against the speakers' centroids it gives.
"""

from __future__ import annotations

if __name__ == "__main__" and __spec__ is None:  # run as a script: run as the module instead
    from servers import run_as_module

    run_as_module(__file__)

import importlib.util
import itertools
import logging
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.fft
from faster_whisper.vad import VadOptions, get_speech_timestamps
from huggingface_hub import snapshot_download
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

from common.audio import SAMPLE_RATE
from common.config import ServerConfig, load
from common.models import DIARIZE_ONLY, ModelCard
from common.speakers import Turn, letters
from specs.diarization import DiarizationJob
from specs.family import DiarizerAPI
from specs.serving import configure_logging, serve

logger = logging.getLogger("open_speech.diarization")
BUNDLED = "bundled"

# resemblyzer's front end and network (its hparams.py)
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms: one mel frame
N_MELS = 40
PARTIAL_FRAMES = 160  # embed_utterance's partial utterances: 1.6 s ...
PARTIAL_STEP = 77  # ... 1.3 a second: round(16000 / 1.3 / 160) frames apart
NORM_DBFS = -30.0  # its preprocessing raises quieter audio to this loudness
HIDDEN = 256
LAYERS = 3

# Diarizing (tuned on the corpus' dev conversation, checked on others built from untranscribed/)
VAD = VadOptions(threshold=0.5, min_speech_duration_ms=250, min_silence_duration_ms=300, speech_pad_ms=100)
VAD_BLOCK_SECONDS = 600  # audio VAD reads at once
VAD_EDGE = 2 * 512  # speech this close to both sides of a block's edge is one region (two VAD frames)
WINDOW_FRAMES = 150  # 1.5 s windows, side by side: overlapping ones would cost more and find no more here
MIN_WINDOW_FRAMES = 50  # windows of less speech are too short to cluster: they only join the nearest voice
CLUSTER_THRESHOLD = 0.375  # average cosine distance up to which windows are one voice (0.325-0.425 do)
MIN_SPEAKER_SECONDS = 10.0  # a voice with less speech than this ...
MIN_SPEAKER_SHARE = 0.05  # ... or than this share of all speech (the lesser) is not a speaker of its own
MAX_CLUSTERED = 4000  # windows clustered at most (an even sample of them): bounds the O(n^2) distances
TURN_PAD = 25  # frames a turn reaches into the silence either side (up to halfway to the next turn)
KNOWN_THRESHOLD = 0.75  # cosine similarity a speaker's centroid needs to an enrolled voice to be named
BATCH = 128  # windows through the LSTM at once: rows enough for fast matrix products, bounded memory
MEL_BLOCK = 6000  # mel frames computed at once (a minute)
# Cosine similarity a pyannote speaker's centroid needs to an enrolled voice (WeSpeaker embeddings) to be
# named. Not measured here (the real weights cannot be downloaded here): the middle of what projects
# matching WeSpeaker or pyannote embeddings use, 0.45 to 0.65.
PYANNOTE_KNOWN_THRESHOLD = 0.5


@dataclass
class DiarizationConfig(ServerConfig):
    model: str = BUNDLED
    batch_timeout: float = 0.05
    workers_per_device: int = 1


def model_card(config: DiarizationConfig) -> ModelCard:
    name = config.name or "diarizer"
    return ModelCard(
        id=name,
        family="diarization",
        aliases=tuple(a for a in config.aliases if a != name),
        capabilities=DIARIZE_ONLY,
        settings=config.public(),
    )


class DiarizationAPI(DiarizerAPI):
    """The bundled diarizer behind `specs.diarization` (the speech windows of every recording of a batch
    through the encoder together), or a pyannote pipeline (the recordings one after the other): both have
    the same interface."""

    config: DiarizationConfig

    def setup(self, device: str) -> None:
        self.diarizer: BundledDiarizer | PyannoteDiarizer
        if self.config.model == BUNDLED:
            self.diarizer = BundledDiarizer()
            logger.info("loaded the bundled diarizer (resemblyzer's encoder in numpy) on the CPU")
        else:
            self.diarizer = PyannoteDiarizer(self.config.model, device)
            logger.info("loaded pyannote.audio's pipeline from %s on %s", self.config.model, device)

    def prepare(self, job: DiarizationJob) -> tuple[Recording | Speakers, dict[str, np.ndarray]]:
        """The job's speech windows (the bundled diarizer) or speakers (pyannote's), and its known voices'
        embeddings."""
        known = {speaker.name: self.diarizer.embed(speaker.audio) for speaker in job.known}
        return self.diarizer.prepare(job.audio.read()), known

    def diarize(self, prepared: list[tuple[Any, dict[str, np.ndarray]]]) -> list[list[Turn]]:
        return self.diarizer.diarize_batch(prepared)


class BundledDiarizer:
    """Resemblyzer's voice encoder in numpy, with VAD and clustering around it."""

    def __init__(self) -> None:
        state = _load_legacy_torch(_weights_path())["model_state"]
        # Gate columns are in/forget/cell/out; the sigmoid ones are halved, so that one tanh over all four
        # gives them too: sigmoid(x) = (tanh(x / 2) + 1) / 2.
        scale = np.repeat(np.array([0.5, 0.5, 1.0, 0.5], np.float32), HIDDEN)
        self._lstm = [
            (
                np.ascontiguousarray(state[f"lstm.weight_ih_l{k}"].T * scale),
                np.ascontiguousarray(state[f"lstm.weight_hh_l{k}"].T * scale),
                (state[f"lstm.bias_ih_l{k}"] + state[f"lstm.bias_hh_l{k}"]) * scale,
            )
            for k in range(LAYERS)
        ]
        self._linear = (np.ascontiguousarray(state["linear.weight"].T), state["linear.bias"])
        self._mel_basis = np.ascontiguousarray(_mel_filterbank().T)
        self._window = _hann().astype(np.float32)

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """A voice's embedding (256,) from a recording of it (16 kHz mono float32), from its speech alone (VAD
        drops the silences, as resemblyzer's preprocessing does): what `diarize` names speakers by."""
        audio = np.asarray(audio, dtype=np.float32)
        speech = [audio[start:end] for start, end in _speech(audio)]
        with threadpool_limits(limits=1, user_api="blas"):
            return self._utterance(np.concatenate(speech) if speech else audio)

    def diarize(self, audio: np.ndarray, known: dict[str, np.ndarray] | None = None) -> list[Turn]:
        """Who spoke when in `audio` (16 kHz mono float32): turns in order. A speaker is the name in `known`
        whose embedding (from `embed`) their voice matches, or else "A", "B", ... in order of first
        appearance (letters that are names in `known` skipped)."""
        return self.diarize_batch([(self.prepare(audio), known or {})])[0]

    def prepare(self, audio: np.ndarray) -> Recording:
        """What `diarize_batch` needs of a recording (16 kHz mono float32): its speech, in windows of mel
        frames to embed."""
        audio = _normalize_volume(np.asarray(audio, dtype=np.float32))
        regions = _speech(audio)
        windows = [window for start, end in regions for window in _tile(start // HOP, -(-end // HOP))]
        mel = self._mel(audio) if windows else np.empty((0, N_MELS), np.float32)
        mels = np.zeros((len(windows), WINDOW_FRAMES, N_MELS), np.float32)
        for row, window in enumerate(windows):
            mels[row, : window.length] = mel[window.start : window.start + window.length]
        return Recording(windows, mels, len(mel), audio.size, _heard_alone(audio, regions))

    def diarize_batch(self, recordings: list[tuple[Recording, dict[str, np.ndarray]]]) -> list[list[Turn]]:
        """`diarize` of each (recording, known voices) pair, with the windows of all of them through the
        encoder at once: the LSTM costs about as much per step for a few rows as for many."""
        mels = np.concatenate([recording.mels for recording, _ in recordings])
        lengths = np.concatenate([recording.lengths for recording, _ in recordings])
        # The LSTM's matrix products are small: on one BLAS thread they took a third of the CPU time they took
        # on two (2 cores, busy), and less wall time too; transcription beside it has the other cores.
        with threadpool_limits(limits=1, user_api="blas"):
            embeddings = self._encode(mels, lengths)
        ends = np.cumsum([len(recording.windows) for recording, _ in recordings])
        return [
            recording.turns(embeddings[end - len(recording.windows) : end], known)
            for (recording, known), end in zip(recordings, ends, strict=True)
        ]

    def name(self, voices: list[np.ndarray], known: dict[str, np.ndarray]) -> list[str]:
        """Names for another diarizer's speakers, given a recording of each one's voice (16 kHz mono float32,
        speakers in order of first appearance), as `diarize` names its own: the enrolled voice (`embed`)
        each is most like, when like enough, else letters."""
        return _names(np.stack([self.embed(voice) for voice in voices]), known)

    def _utterance(self, audio: np.ndarray) -> np.ndarray:
        """resemblyzer's `embed_utterance` of its `normalize_volume`d audio: the L2-normalised mean of the
        embeddings of 1.6 s partials, 1.3 a second, the last one zero-padded when at least 3/4 full."""
        audio = _normalize_volume(audio)
        n_frames = int(np.ceil((audio.size + 1) / HOP))
        starts = list(range(0, max(1, n_frames - PARTIAL_FRAMES + PARTIAL_STEP + 1), PARTIAL_STEP))
        if len(starts) > 1 and (audio.size - starts[-1] * HOP) / (PARTIAL_FRAMES * HOP) < 0.75:
            starts.pop()
        audio = np.pad(audio, (0, max(0, (starts[-1] + PARTIAL_FRAMES) * HOP - audio.size)))
        mel = self._mel(audio)
        mels = np.stack([mel[start : start + PARTIAL_FRAMES] for start in starts])
        return _unit(self._encode(mels, np.full(len(starts), PARTIAL_FRAMES)).mean(axis=0))

    def _mel(self, audio: np.ndarray) -> np.ndarray:
        """Power mel spectrogram (frames, 40), as librosa.feature.melspectrogram makes it for resemblyzer:
        centred 25 ms periodic-Hann frames every 10 ms, the audio zero-padded at the ends. A minute at a
        time, as the frames' spectra take 40 times the memory of the audio."""
        count = 1 + audio.size // HOP
        mel = np.empty((count, N_MELS), np.float32)
        for first in range(0, count, MEL_BLOCK):
            last = min(first + MEL_BLOCK, count)
            low, high = first * HOP - N_FFT // 2, (last - 1) * HOP + N_FFT // 2
            piece = np.pad(audio[max(low, 0) : high], (max(0, -low), max(0, high - audio.size)))
            frames = np.lib.stride_tricks.sliding_window_view(piece, N_FFT)[::HOP]
            spectrum = scipy.fft.rfft(frames * self._window, axis=1)
            mel[first:last] = (spectrum.real**2 + spectrum.imag**2) @ self._mel_basis
        return mel

    def _encode(self, mels: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Embeddings (n, 256) of mel windows (n, frames, 40), each `lengths[i]` frames long (zero-padded
        after): the last layer's hidden state at each window's end, through the linear layer and a ReLU,
        L2-normalised. Windows go through in batches of like lengths, so that little padding is run."""
        order = np.argsort(lengths, kind="stable")
        hidden = np.empty((len(mels), HIDDEN), np.float32)
        for first in range(0, len(order), BATCH):
            rows = order[first : first + BATCH]
            x = np.ascontiguousarray(mels[rows, : int(lengths[rows].max())].transpose(1, 0, 2))  # time-major
            for w_ih, w_hh, bias in self._lstm:
                x = _lstm_layer(x, w_ih, w_hh, bias)
            hidden[rows] = x[lengths[rows] - 1, np.arange(len(rows))]
        weight, bias = self._linear
        return _unit(np.maximum(hidden @ weight + bias, 0), axis=1)


def _lstm_layer(x: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """One PyTorch LSTM layer over time-major input (time, batch, features), its sigmoid gates' weights
    halved (see `BundledDiarizer.__init__`). The input's share of every step is one matrix product up
    front; each step then works in place, as numpy's per-call overhead is most of an LSTM step's cost."""
    steps, batch, _ = x.shape
    gates_in = (x.reshape(steps * batch, -1) @ w_ih).reshape(steps, batch, 4 * HIDDEN)
    gates_in += bias
    out = np.zeros((steps + 1, batch, HIDDEN), np.float32)  # out[-1] is the zero state before step 0
    c = np.zeros((batch, HIDDEN), np.float32)
    gates = np.empty((batch, 4 * HIDDEN), np.float32)
    i, f, g, o = (gates[:, k * HIDDEN : (k + 1) * HIDDEN] for k in range(4))
    for t in range(steps):
        np.matmul(out[t - 1], w_hh, out=gates)
        gates += gates_in[t]
        np.tanh(gates, out=gates)
        for sigmoid in (i, f, o):
            sigmoid += 1
            sigmoid *= 0.5
        c *= f
        i *= g
        c += i
        np.tanh(c, out=out[t])
        out[t] *= o
    return out[:steps]


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def _normalize_volume(audio: np.ndarray) -> np.ndarray:
    """resemblyzer's `normalize_volume(increase_only=True)`: quiet audio up to -30 dBFS, loud left alone."""
    rms = float(np.sqrt(np.dot(audio, audio) / audio.size)) if audio.size else 0.0
    if rms == 0:
        return audio
    gain = 10 ** ((NORM_DBFS - 20 * np.log10(rms)) / 20)
    return audio * np.float32(gain) if gain > 1 else audio


def _hann() -> np.ndarray:
    """The periodic Hann window (scipy's get_window("hann", fftbins=True)), as librosa's STFT uses."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)


def _mel_filterbank() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=40) with its defaults: Slaney's mel scale (linear
    below 1 kHz, logarithmic above), triangles normalised to equal area ("slaney" norm), float32."""
    log_step = np.log(6.4) / 27

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        return np.where(hz >= 1000, 15 + np.log(np.maximum(hz, 1000) / 1000) / log_step, hz / (200 / 3))

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(mel >= 15, 1000 * np.exp(log_step * (mel - 15)), mel * (200 / 3))

    fft_hz = np.fft.rfftfreq(N_FFT, 1 / SAMPLE_RATE)
    edges = mel_to_hz(np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling)) * (2 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def _speech(audio: np.ndarray) -> list[tuple[int, int]]:
    """Where Silero VAD hears speech, in samples. faster-whisper's VAD copies what it reads twice over, so
    a long recording is read in blocks, but long ones: the model's state carries through a block, and
    restarting it more often changes what it hears (in the dev conversation, more of one noisy recording,
    which the encoder then takes for another voice)."""
    block = VAD_BLOCK_SECONDS * SAMPLE_RATE
    regions: list[tuple[int, int]] = []
    for first in range(0, audio.size, block):
        for region in get_speech_timestamps(audio[first : first + block], VAD):
            start, end = first + region["start"], first + region["end"]
            if regions and regions[-1][1] >= first - VAD_EDGE and region["start"] <= VAD_EDGE:
                start = regions.pop()[0]  # speech that went on across the blocks' edge
            regions.append((start, end))
    return regions


def _heard_alone(audio: np.ndarray, regions: list[tuple[int, int]]) -> frozenset[tuple[int, int]]:
    """The pauses between speech `regions` (as frames from, to) in at least half of which VAD, run on the
    pause alone, hears speech. Silero VAD's state carries through a recording, and after a clear voice it
    can miss much of a quieter or noisier one that it hears in full on its own (in the dev conversation,
    half of a speaker's recording made with a cold). Such a pause between two stretches of one speaker is
    theirs (`_turns`); it is not embedded, so a voice VAD is unsure of is never taken for a new one."""
    quiet = set()
    for (_, end), (start, _) in itertools.pairwise(regions):
        if start - end <= 2 * TURN_PAD * HOP:
            continue  # the turns either side meet anyway
        heard = sum(region["end"] - region["start"] for region in get_speech_timestamps(audio[end:start], VAD))
        if 2 * heard >= start - end:
            quiet.add((-(-end // HOP), start // HOP))
    return frozenset(quiet)


@dataclass(frozen=True)
class _Window:
    """Frames `start` to `start + length` are embedded; the voice found there speaks from frame `first` to
    `last`: where the window's middle is nearer than any other's of its speech region."""

    start: int
    length: int
    first: int
    last: int


@dataclass
class Recording:
    """One recording's speech windows, their mel frames (zero-padded to WINDOW_FRAMES) ready to embed, the
    recording's length in mel frames and in samples, and its pauses that hold quiet speech
    (`_heard_alone`)."""

    windows: list[_Window]
    mels: np.ndarray
    frames: int
    samples: int
    quiet: frozenset[tuple[int, int]]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([window.length for window in self.windows], int)

    def turns(self, embeddings: np.ndarray, known: dict[str, np.ndarray]) -> list[Turn]:
        """Its turns, given its windows' embeddings (see `BundledDiarizer.diarize`)."""
        if not self.windows:
            return []
        durations = np.array([window.last - window.first for window in self.windows])
        labels, centroids = _cluster(embeddings, self.lengths, durations)
        first_seen = list(dict.fromkeys(labels.tolist()))  # cluster ids in order of first appearance
        names = dict(zip(first_seen, _names(centroids[first_seen], known), strict=True))
        pieces = [(window.first, window.last, int(label)) for window, label in zip(self.windows, labels, strict=True)]
        return [
            Turn(start * HOP / SAMPLE_RATE, min(end * HOP, self.samples) / SAMPLE_RATE, names[label])
            for start, end, label in _turns(pieces, self.frames, self.quiet)
        ]


def _tile(start: int, end: int) -> list[_Window]:
    """Windows over one speech region (frames): as few WINDOW_FRAMES windows as cover it, evenly spread
    from its first frame to its last (so they overlap a little); one as long as the region when it is
    shorter. Windows never cross a pause, where speakers most often change."""
    length = end - start
    if length <= WINDOW_FRAMES:
        return [_Window(start, length, start, end)]
    count = -(-length // WINDOW_FRAMES)
    starts = [start + round(k * (length - WINDOW_FRAMES) / (count - 1)) for k in range(count)]
    edges = [start] + [(a + b + WINDOW_FRAMES) // 2 for a, b in itertools.pairwise(starts)] + [end]
    return [_Window(at, WINDOW_FRAMES, edges[k], edges[k + 1]) for k, at in enumerate(starts)]


def _cluster(embeddings: np.ndarray, lengths: np.ndarray, durations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A speaker per window (labels 0..k-1) and each speaker's centroid (unit vectors).

    Windows long enough to tell a voice by are clustered: average linkage on cosine distance, cut at
    CLUSTER_THRESHOLD, so that the number of speakers is found, not given. Every window then joins the
    centroid nearest to it. A cluster with less speech than MIN_SPEAKER_SECONDS (or MIN_SPEAKER_SHARE of
    all of it) is more often one voice heard in other conditions than a voice of its own: smallest
    first, such clusters are dissolved into the nearest of the others.
    """
    reliable = np.flatnonzero(lengths >= MIN_WINDOW_FRAMES)
    if len(reliable) < 2:
        reliable = np.arange(len(embeddings))
    if len(reliable) < 2:
        return np.zeros(len(embeddings), int), _unit(embeddings, axis=1)
    reliable = reliable[np.linspace(0, len(reliable) - 1, min(len(reliable), MAX_CLUSTERED)).astype(int)]
    clusters = fcluster(linkage(embeddings[reliable], "average", "cosine"), CLUSTER_THRESHOLD, "distance")
    centroids = np.stack([embeddings[reliable[clusters == k]].mean(axis=0) for k in np.unique(clusters)])
    least = min(MIN_SPEAKER_SECONDS * SAMPLE_RATE / HOP, MIN_SPEAKER_SHARE * durations.sum())
    while True:
        labels = np.argmax(embeddings @ _unit(centroids, axis=1).T, axis=1)
        speech = np.bincount(labels, weights=durations, minlength=len(centroids))
        kept = speech > 0
        if kept.sum() > 1 and speech[kept].min() < least:
            kept[np.flatnonzero(kept)[np.argmin(speech[kept])]] = False
        if kept.all():
            return labels, _unit(
                np.stack([embeddings[labels == k].mean(axis=0) for k in range(len(centroids))]), axis=1
            )
        centroids = centroids[kept]


def _names(centroids: np.ndarray, known: dict[str, np.ndarray], threshold: float = KNOWN_THRESHOLD) -> list[str]:
    """A name per speaker (centroids, unit vectors, in order of first appearance): the enrolled voice it is
    most like, when at least `threshold` like it (cosine similarity), each name given once (the pairing of
    most total similarity); letters, in order, for the others."""
    names: list[str | None] = [None] * len(centroids)
    if known:
        similarity = centroids @ _unit(np.stack(list(known.values())), axis=1).T
        for row, col in zip(*linear_sum_assignment(similarity, maximize=True), strict=True):
            if similarity[row, col] >= threshold:
                names[row] = list(known)[col]
    free = (letter for letter in letters() if letter not in known)
    return [name if name is not None else next(free) for name in names]


def _turns(
    pieces: list[tuple[int, int, int]], total: int, quiet: frozenset[tuple[int, int]]
) -> list[tuple[int, int, int]]:
    """Turns (frames) from the windows' stretches of speech, in order: each reaches TURN_PAD frames into
    the silence either side, up to halfway to its neighbour, and one speaker's stretches that then meet,
    or that only a pause of `quiet` speech (frames from, to) parts, are one turn (a pause in one's speech
    is no turn of anyone else's)."""
    turns: list[tuple[int, int, int]] = []
    for k, (start, end, label) in enumerate(pieces):
        pause = None if k == 0 else (pieces[k - 1][1], start)
        before = 0 if k == 0 else (pieces[k - 1][1] + start) // 2
        after = total if k == len(pieces) - 1 else (end + pieces[k + 1][0]) // 2
        start, end = max(before, start - TURN_PAD), min(after, end + TURN_PAD)
        if turns and turns[-1][2] == label and (turns[-1][1] >= start or pause in quiet):
            start = turns.pop()[0]
        turns.append((start, end, label))
    return turns


def _weights_path() -> Path:
    """pretrained.pt inside the installed resemblyzer package, found without importing it (importing it
    would import torch)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the bundled diarizer needs resemblyzer's weights: pip install --no-deps resemblyzer==0.1.4")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization's MAGIC_NUMBER
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "LongStorage": np.int64}


@dataclass
class _Storage:
    key: str
    dtype: type
    data: np.ndarray | None = None


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickles a legacy (pre-1.6, not zip) torch checkpoint: an OrderedDict of tensors, and nothing else
    (any other class is refused). Tensors come back as thunks, built once the storages are read."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid: Any) -> _Storage:
        kind, dtype, key, _location, _size, view = pid
        if kind != "storage" or view is not None:
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return self.storages.setdefault(key, _Storage(key, dtype))


@dataclass
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def numpy(self) -> np.ndarray:
        assert self.storage.data is not None
        data = self.storage.data[self.offset :]
        strides = tuple(s * data.itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(data, self.shape, strides).copy()


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple, stride: tuple, *_: Any) -> _Tensor:
    return _Tensor(storage, offset, tuple(shape), tuple(stride))


def _load_legacy_torch(path: Path) -> dict[str, Any]:
    """torch.load of a legacy checkpoint, to numpy: pickles of the magic number, protocol and system info,
    then the object, then the list of storage keys; then each storage as an int64 element count followed
    by its raw little-endian elements."""
    storages: dict[str, _Storage] = {}
    with path.open("rb") as file:
        if _LegacyUnpickler(file, storages).load() != LEGACY_MAGIC:
            raise ValueError(f"{path} is not a legacy torch checkpoint")
        for _ in range(2):
            _LegacyUnpickler(file, storages).load()
        obj = _LegacyUnpickler(file, storages).load()
        for key in _LegacyUnpickler(file, storages).load():
            storage = storages[key]
            count = int(np.frombuffer(file.read(8), "<i8")[0])
            storage.data = np.frombuffer(file.read(count * np.dtype(storage.dtype).itemsize), storage.dtype)
    return _materialize(obj)


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {key: _materialize(value) for key, value in obj.items()}
    return obj


class PyannoteDiarizer:
    """A pyannote.audio 4 speaker diarization pipeline (pyannote/speaker-diarization-community-1's, or
    another with speaker embeddings), with the bundled diarizer's interface: `embed`, `prepare`,
    `diarize_batch`. torch and pyannote.audio are imported here only, so that the bundled diarizer and the
    default install never need them."""

    def __init__(self, source: str, device: str) -> None:
        """Load the pipeline from `source`, a local folder or a hub repo id: the repo is read from the Hugging
        Face cache, where `/api/pull` puts it; what is missing there is downloaded (HF_TOKEN for a gated repo,
        as community-1 is). A folder is handed to pyannote, which then never goes to the hub itself."""
        # pyannote.audio sends usage telemetry to pyannote.ai unless this says no: a self-hosted server does not.
        os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")
        import torch
        from pyannote.audio import Pipeline

        folder = source if Path(source).is_dir() else snapshot_download(source)
        self._pipeline = Pipeline.from_pretrained(folder).to(torch.device(device))

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """A voice's embedding (unit vector) from a recording of it (16 kHz mono float32), by the pipeline's
        own embedding model (`_embedding`: pyannote has no public handle on it), in whose space its
        speakers' centroids are."""
        return _unit(self._pipeline._embedding(_tensor(audio)[None])[0])

    def prepare(self, audio: np.ndarray) -> Speakers:
        """The pipeline's speakers in a recording (16 kHz mono float32), given its samples (so that pyannote
        reads no file): its exclusive diarization (one speaker at a time, as turns are), and each speaker's
        centroid."""
        duration = audio.size / SAMPLE_RATE
        found = self._pipeline({"waveform": _tensor(audio), "sample_rate": SAMPLE_RATE})
        tracks = sorted(
            (segment.start, min(segment.end, duration), label)
            for segment, _, label in found.exclusive_speaker_diarization.itertracks(yield_label=True)
        )
        tracks = [(start, end, label) for start, end, label in tracks if start < end]
        first_seen = list(dict.fromkeys(label for _, _, label in tracks))
        rows = found.speaker_diarization.labels()  # the rows of speaker_embeddings
        # A speaker pyannote found no clean speech of has no centroid (NaN, or a row of zeros): named by
        # nothing, a letter.
        centroids = np.nan_to_num(found.speaker_embeddings[[rows.index(label) for label in first_seen]])
        order = {label: k for k, label in enumerate(first_seen)}
        return Speakers([(start, end, order[label]) for start, end, label in tracks], _unit(centroids, axis=1))

    def diarize_batch(self, recordings: list[tuple[Speakers, dict[str, np.ndarray]]]) -> list[list[Turn]]:
        """Each recording's turns, its speakers named after the known voices (`embed`) or lettered."""
        return [speakers.turns(known) for speakers, known in recordings]


@dataclass
class Speakers:
    """What pyannote's pipeline found in a recording: turns (start and end in seconds, speaker index), in
    order, speakers numbered in order of first appearance; and their centroids (unit vectors)."""

    tracks: list[tuple[float, float, int]]
    centroids: np.ndarray

    def turns(self, known: dict[str, np.ndarray]) -> list[Turn]:
        """The turns, each speaker named by the known voice like it (see `_names`) or lettered."""
        names = _names(self.centroids, known, PYANNOTE_KNOWN_THRESHOLD)
        return [Turn(start, end, names[speaker]) for start, end, speaker in self.tracks]


def _tensor(audio: np.ndarray) -> Any:
    """16 kHz mono samples as pyannote takes a waveform: a float32 tensor (channel, time)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]


def pyannote_device(device: str) -> str:
    """`auto`: CUDA when torch sees a GPU, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> None:
    config = load(DiarizationConfig, "diarization", argv)
    configure_logging(config.log_level)
    if config.model == BUNDLED:
        if config.device not in ("auto", "cpu"):
            raise SystemExit(f"the bundled diarizer runs on the CPU (--device auto or cpu), not {config.device!r}")
        device = "cpu"
    else:
        device = pyannote_device(config.device)
        # torch's OpenMP threads spin while they wait for work, as in servers/nemo.py: the workers read this
        # as torch loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    serve(DiarizationAPI(config, model_card(config)), config, device, "1", config.workers_per_device)


if __name__ == "__main__":
    main()
