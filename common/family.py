"""The base every model family's LitAPI builds on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import litserve as ls

from common.jobs import TranscriptionJob

Step = list[dict[str, Any] | None]


class FamilyAPI(ls.LitAPI):
    """A LitAPI that takes `TranscriptionJob`s and streams events (see `common.jobs`).

    Families implement `transcribe_batch`: given the jobs LitServe batched together, yield steps,
    each a list with one entry per job (an event, or None when that job has nothing new), until every
    job is finished. A failing job yields an error event; it must never fail its batch-mates.
    """

    def transcribe_batch(self, jobs: list[TranscriptionJob]) -> Iterator[Step]:
        raise NotImplementedError

    def predict(self, x: TranscriptionJob | list[TranscriptionJob]) -> Iterator[Any]:
        if self.max_batch_size > 1:
            yield from self.transcribe_batch(x)
            return
        for (event,) in self.transcribe_batch([x]):
            if event is not None:
                yield event
