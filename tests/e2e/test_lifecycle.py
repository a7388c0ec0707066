"""Start-up on the embedded default, and a clean stop on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

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


def test_a_start_sweeps_the_folders_that_killed_runs_left_and_only_those() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="sweep-", dir="/tmp"))  # short: LitServe's socket goes below it
    env = {"TMPDIR": str(tmp_path)}
    others = [
        tmp_path / "pymp-not-ours",
        tmp_path / "open-speech-notes",
        tmp_path / f"open-speech-x-{os.getpid()}-live",
    ]
    for folder in others:
        folder.mkdir()
    killed = ServerProcess("servers/faster_whisper.py", env=env, name="killed").wait_healthy()
    left = list(tmp_path.glob(f"open-speech-*-{killed.process.pid}-*"))
    assert {p.name.split("-")[2] for p in left} == {"server", "metrics"}
    os.killpg(killed.process.pid, signal.SIGKILL)
    killed.process.wait()
    assert all(p.exists() for p in left)  # kill -9: nothing could remove them
    with ServerProcess("servers/faster_whisper.py", env=env, name="sweeper") as sweeper:
        assert not any(p.exists() for p in left)
        assert all(p.exists() for p in others)
        own = list(tmp_path.glob(f"open-speech-*-{sweeper.process.pid}-*"))
    assert own and not any(p.exists() for p in own)  # a clean stop removes its own
    shutil.rmtree(tmp_path)
