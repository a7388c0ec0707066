"""Cache-aware streaming for NeMo FastConformer models (e.g. nvidia/nemotron-speech-streaming-en-0.6b).

A `LiveStream` takes audio as it arrives, turns it into log-mel frames that are bit-identical to the
whole-file mel (only frames whose window has fully arrived are computed), and feeds the encoder one
chunk at a time through `conformer_stream_step`, carrying the encoder caches and the decoder
hypothesis between steps. `step_round` steps every stream that has a chunk ready, batching the
streams that are in the same phase. For the same attention context the final text equals the
offline decode of the whole audio (checked by the tests).

Chunk sizes come from the encoder's `streaming_cfg` once `set_default_att_context_size` has chosen
the lookahead: [70, 13] steps 1.12 s of audio at a time, [70, 6] 560 ms, [70, 1] 160 ms, [70, 0] 80 ms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from nemo.collections.asr.parts.submodules.subsampling import calc_length


@dataclass
class Chunk:
    mel: torch.Tensor  # [1, n_mels, frames], pre-encode cache frames included
    first: bool
    keep_all: bool  # the step must keep every output frame (last partial chunk, or an enlarged first one)
    take: int  # new mel frames fed by this step


@dataclass
class LiveStream:
    """One stream's state: samples received, mel frames not yet fed, encoder caches, hypothesis."""

    model: object
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ended: bool = False
    n_mel: int = 0  # final mel frames computed so far
    n_fed: int = 0  # mel frames fed to the encoder so far
    mel: torch.Tensor | None = None  # the last fed frames (the pre-encode cache), then the pending ones
    caches: tuple | None = None
    hypothesis: object | None = None
    text: str = ""
    done: bool = False
    last_used: float = 0.0  # live streams: when a request last continued it (time.monotonic)

    def __post_init__(self) -> None:
        encoder = self.model.encoder
        self.mel = torch.zeros(1, self.model.cfg.preprocessor.features, 0)
        self.caches = encoder.get_initial_cache_state(batch_size=1)

    @property
    def seconds_fed(self) -> float:
        return self.n_fed * self.model.cfg.preprocessor.window_stride

    def push(self, piece: np.ndarray, last: bool = False) -> None:
        """Add arriving audio (16 kHz float32); compute the mel frames it completes."""
        cfg = self.model.cfg.preprocessor
        hop = int(cfg.window_stride * cfg.sample_rate)
        half_window = int(cfg.window_size * cfg.sample_rate) // 2
        self.samples = np.concatenate([self.samples, piece.astype(np.float32, copy=False)])
        self.ended = last
        n = len(self.samples)
        # Frame i reads samples [hop*i - half_window - 1, hop*i + half_window) (-1: pre-emphasis), so
        # mid-stream only frames whose window has fully arrived are final.
        stable = n // hop if last else max(0, min(n // hop, (n - half_window) // hop + 1))
        if stable <= self.n_mel:
            return
        start = max(0, self.n_mel - 3)  # 3 frames back give the STFT its left context
        x = torch.from_numpy(self.samples[start * hop :]).unsqueeze(0)
        with torch.inference_mode():
            mel, _ = self.model.preprocessor(input_signal=x, length=torch.tensor([x.shape[1]]))
        self.mel = torch.cat([self.mel, mel[:, :, self.n_mel - start : stable - start].float()], dim=-1)
        self.n_mel = stable

    def next_chunk(self) -> Chunk | None:
        """The next step's input, or None until enough audio has arrived (or when done)."""
        if self.done:
            return None
        cfg = self.model.encoder.streaming_cfg
        first = self.n_fed == 0
        cache = cfg.pre_encode_cache_size[1]
        need = cfg.chunk_size[0] if first else cfg.chunk_size[1]
        if first and need < cache:
            # Lookahead 0 starts with a single frame: take whole shifts until the pre-encode cache is
            # full, since a zero-filled cache is not what the offline decode sees.
            need += cfg.shift_size[1] * -(-(cache - need) // cfg.shift_size[1])
        pending = self.n_mel - self.n_fed
        if pending >= need:
            take = need
        elif self.ended:
            take = pending
        else:
            return None
        if _encoder_frames(self.model, self.n_fed + take) == (
            _encoder_frames(self.model, self.n_fed) if not first else 0
        ):
            self.done = True  # a tail too short for one encoder frame: conformer_stream_step cannot run it
            return None
        mel = self.mel[:, :, : (0 if first else cache) + take]
        keep_all = (self.ended and take == pending) or take > cfg.chunk_size[0 if first else 1]
        return Chunk(mel, first, keep_all, take)

    def consumed(self, take: int) -> None:
        self.n_fed += take
        keep = min(self.model.encoder.streaming_cfg.pre_encode_cache_size[1], self.n_fed)
        self.mel = self.mel[:, :, -(keep + self.n_mel - self.n_fed) :]
        self.done = self.ended and self.n_fed == self.n_mel


def _encoder_frames(model: object, n_mel: int) -> int:
    p = model.encoder.pre_encode
    lengths = calc_length(
        torch.tensor([n_mel]),
        all_paddings=p._left_padding + p._right_padding,
        kernel_size=p._kernel_size,
        stride=p._stride,
        ceil_mode=p._ceil_mode,
        repeat_num=p._sampling_num,
    )
    return int(lengths)


def step_round(model: object, streams: list[LiveStream], dtype: torch.dtype, device: torch.device) -> dict[int, str]:
    """Step each stream that has a chunk ready, once; streams in the same phase share one batch.

    Returns the new text of each stream stepped, by its index in `streams`.
    """
    ready = [(i, chunk) for i, s in enumerate(streams) if (chunk := s.next_chunk()) is not None]
    groups: dict[tuple[bool, bool], list[tuple[int, Chunk]]] = {}
    for i, chunk in ready:
        groups.setdefault((chunk.first, chunk.keep_all), []).append((i, chunk))
    deltas: dict[int, str] = {}
    for (first, keep_all), members in groups.items():
        members_streams = [streams[i] for i, _ in members]
        frames = max(c.mel.shape[-1] for _, c in members)
        x = torch.zeros(len(members), members[0][1].mel.shape[1], frames)
        for row, (_, c) in enumerate(members):
            x[row, :, : c.mel.shape[-1]] = c.mel[0]
        lengths = torch.tensor([c.mel.shape[-1] for _, c in members], device=device)
        channel = torch.cat([s.caches[0] for s in members_streams], dim=1)
        time_cache = torch.cat([s.caches[1] for s in members_streams], dim=1)
        channel_len = torch.cat([s.caches[2] for s in members_streams], dim=0)
        with torch.inference_mode():
            _, hyps, channel, time_cache, channel_len, _ = model.conformer_stream_step(
                processed_signal=x.to(device=device, dtype=dtype),
                processed_signal_length=lengths,
                cache_last_channel=channel,
                cache_last_time=time_cache,
                cache_last_channel_len=channel_len,
                keep_all_outputs=keep_all,
                previous_hypotheses=None if first else [s.hypothesis for s in members_streams],
                drop_extra_pre_encoded=0 if first else model.encoder.streaming_cfg.drop_extra_pre_encoded,
                return_transcription=True,
            )
        for row, (i, chunk) in enumerate(members):
            stream = streams[i]
            stream.caches = (channel[:, row : row + 1], time_cache[:, row : row + 1], channel_len[row : row + 1])
            stream.hypothesis = hyps[row]
            text = hyps[row].text
            deltas[i] = text[len(stream.text) :] if text.startswith(stream.text) else ""
            stream.text = text if text.startswith(stream.text) else stream.text
            stream.consumed(chunk.take)
    return deltas
