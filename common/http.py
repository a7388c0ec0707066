"""The HTTP server's own defences against slow clients, which ASGI middleware cannot see.

uvicorn waits for ever for a connection that sends nothing, or for the end of a request's headers: one
slow client per connection would hold it (slowloris). `HeaderDeadline` is uvicorn's HTTP protocol with
a deadline on both; `UploadLimit` (common.middleware) sees to slow bodies, and uvicorn's own
`limit_concurrency` (the `max_connections` option) to how many connections there are at once.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("open_speech.http")
HEADER_SECONDS = 10.0  # from a connection's start, or a request's first byte, to the end of its headers


class HeaderDeadline(HttpToolsProtocol):
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(HEADER_SECONDS, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        logger.info("closed a connection whose request headers did not come within %g s", HEADER_SECONDS)
        self.transport.close()
