"""Start-up on the embedded default, and a clean stop on SIGTERM."""

from __future__ import annotations

import os
import socket
import time

import httpx

from tests.helpers import ServerProcess


def test_sigterm_stops_every_process_and_frees_the_port() -> None:
    server = ServerProcess("servers/faster_whisper.py", name="sigterm").wait_healthy()
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == "tiny.en"
    group = os.getpgid(server.process.pid)
    assert server.stop(timeout=30) is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)  # any process of the server's group still alive?
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("processes of the server outlived SIGTERM")
    with socket.socket() as s:  # no listener keeps the port (TIME_WAIT connections may remain)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))
