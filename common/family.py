"""The base every model family's LitAPI builds on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import litserve as ls

from common import metrics
from common.audio import AudioLimits
from common.config import ServerConfig
from common.jobs import ModelCard, TranscriptionJob
from specs.openai_audio import OpenAIAudioSpec

Step = list[dict[str, Any] | None]


class FamilyAPI(ls.LitAPI):
    """A LitAPI that takes `TranscriptionJob`s and streams events (see `common.jobs`).

    Families implement `transcribe_batch`: given the jobs LitServe batched together, yield steps,
    each a list with one entry per job (an event, or None when that job has nothing new), until every
    job is finished. A failing job yields an error event; it must never fail its batch-mates.
    """

    def __init__(self, config: ServerConfig, card: ModelCard) -> None:
        """`config` is the family's own config; it has max_batch_size and batch_timeout for LitServe."""
        super().__init__(
            spec=OpenAIAudioSpec(card, AudioLimits(config.max_audio_seconds)),
            max_batch_size=config.max_batch_size,  # type: ignore[attr-defined]
            batch_timeout=config.batch_timeout,  # type: ignore[attr-defined]
        )
        self.config = config

    def transcribe_batch(self, jobs: list[TranscriptionJob]) -> Iterator[Step]:
        raise NotImplementedError

    def predict(self, x: TranscriptionJob | list[TranscriptionJob]) -> Iterator[Any]:
        jobs = x if isinstance(x, list) else [x]
        steps = metrics.observe_batch(self.spec.model.id, jobs, self.transcribe_batch(jobs))
        if self.max_batch_size > 1:
            yield from steps
            return
        for (event,) in steps:
            if event is not None:
                yield event


def only(size: int, index: int, event: dict[str, Any]) -> Step:
    """The step of a batch of `size` jobs that carries one event, for job `index`."""
    step: Step = [None] * size
    step[index] = event
    return step


def packed(size: int, events: list[tuple[int, dict[str, Any]]]) -> Iterator[Step]:
    """`(job index, event)` pairs of a batch of `size` jobs in as few steps as keep each job's order: the
    n-th event of every job goes in step n. Every step costs one message per job from the worker to the
    API process, even for jobs it has nothing for, so fewer steps is less serving overhead."""
    steps: list[Step] = []
    placed = [0] * size
    for index, event in events:
        if placed[index] == len(steps):
            steps.append([None] * size)
        steps[placed[index]][index] = event
        placed[index] += 1
    yield from steps
