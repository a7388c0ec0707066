"""The workers' batch loop (`specs.family`): each job gets its own events and the end of its stream, and a
job that waited in the queue past the server's timeout is refused without running."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from litserve.utils import LitAPIStatus

from common.audio import AudioLimits, spool
from common.config import TranscriptionConfig
from common.jobs import TranscriptionJob, info_event, read_error
from common.models import ModelCard
from specs.family import FamilyAPI, Step, only
from specs.transport import PipeTransport, job_queue


@dataclass
class _Config(TranscriptionConfig):
    batch_timeout: float = 0.05


class _Durations(FamilyAPI):
    """A family whose model tells each job its audio's length, then the first job its length again."""

    def transcribe_batch(self, jobs: list[TranscriptionJob]) -> Iterator[Step]:
        yield [info_event("en", job.duration) for job in jobs]
        yield only(len(jobs), 0, info_event("en", jobs[0].duration))


def test_each_job_gets_its_events_and_one_that_waited_too_long_is_refused(tmp_path: Path) -> None:
    api = _Durations(_Config(max_batch_size=4), ModelCard("durations", "test"))
    api.request_timeout = 5.0
    queue, transport = job_queue(), PipeTransport.create(1)
    seconds = {"first": 1.0, "second": 2.0, "late": 3.0}
    for uid, length in seconds.items():
        audio = spool(np.zeros(int(16_000 * length), np.float32), AudioLimits(60, tmp_path))
        queued_at = time.monotonic() - (60 if uid == "late" else 0)
        queue.put((0, uid, queued_at, TranscriptionJob(audio, queued_at=queued_at)))
    time.sleep(0.5)  # the queue's feeder thread has put them all on the pipe

    api.loop.run(api, "cpu", 0, queue, transport)

    events: dict[str, list] = {uid: [] for uid in seconds}
    ended: set[str] = set()
    while ended != set(seconds):
        uid, (data, status, *_) = transport.queues[0].get(timeout=5)
        if status == LitAPIStatus.FINISH_STREAMING:
            ended.add(uid)
        else:
            assert status == LitAPIStatus.OK and uid not in ended
            events[uid].append(data)
    assert [e["duration"] for e in events["first"]] == [1.0, 1.0]
    assert [e["duration"] for e in events["second"]] == [2.0]  # nothing for it in the second step
    (refused,) = events["late"]
    assert read_error(refused).code == "queue_timeout"
