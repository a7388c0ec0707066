"""How jobs and results cross between a family server's API processes and its inference workers.

LitServe 0.2.19 passes both through a multiprocessing Manager: every put and every get is a round trip
through the Manager's process, and each API process reads results with a thread hop per message. Here
both are plain multiprocessing queues (pipes): jobs on one queue that every worker reads, results on one
queue per API process that its event loop reads when the pipe is readable.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
from queue import Empty
from typing import Any

from litserve.transport.base import MessageTransport

_SPAWN = mp.get_context("spawn")  # workers are spawned; API processes are forked and inherit the pipes


def job_queue() -> Any:
    """The queue API processes put jobs on and workers take them from."""
    return _SPAWN.Queue()


class PipeTransport(MessageTransport):
    """Results from the workers to the API process `consumer_id`, one queue each."""

    def __init__(self, queues: list[Any]) -> None:
        self.queues = queues
        self._readable: asyncio.Event | None = None

    @classmethod
    def create(cls, consumers: int) -> PipeTransport:
        return cls([_SPAWN.Queue() for _ in range(consumers)])

    def send(self, item: Any, consumer_id: int) -> None:
        self.queues[consumer_id].put(item)

    async def areceive(self, consumer_id: int | None = None, timeout: float | None = None) -> Any:
        queue = self.queues[consumer_id or 0]
        if self._readable is None:
            # The event loop's poll is level-triggered: the callback fires while unread data waits.
            self._readable = asyncio.Event()
            fd = queue._reader.fileno()
            asyncio.get_running_loop().add_reader(fd, self._readable.set)
            # uvloop (libuv) makes a polled fd non-blocking: a message still arriving would then be read in
            # part and lost. Reads happen only once the pipe is readable, so blocking ones are short.
            os.set_blocking(fd, True)
        while True:
            try:
                return queue.get_nowait()
            except Empty:
                self._readable.clear()
                await asyncio.wait_for(self._readable.wait(), timeout)

    def close(self, send_sentinel: bool = True) -> None:
        if send_sentinel:
            for queue in self.queues:
                queue.put(None)

    def __reduce__(self) -> tuple[type, tuple[list[Any]]]:
        return PipeTransport, (self.queues,)
