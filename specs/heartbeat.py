"""Liveness of a family server's inference workers, seen from its API process.

Each worker, once set up, touches a file of its own every second from a thread of its own (`Heartbeat`,
a LitServe callback). A worker that is stopped (SIGSTOP), killed, or stuck holding the interpreter stops
touching it; its server's /health then answers 503 (`workers_alive`), and the router, which polls it,
restarts the server.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import litserve as ls

BEAT_SECONDS = 1.0


class Heartbeat(ls.Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder  # the server's temporary folder: gone with it

    def on_after_setup(self, *args: Any, **kwargs: Any) -> None:
        path = self.folder / f"heartbeat-{os.getpid()}"

        def beat() -> None:
            while True:
                path.touch()
                time.sleep(BEAT_SECONDS)

        threading.Thread(target=beat, name="heartbeat", daemon=True).start()


def workers_alive(folder: Path, hang_seconds: float) -> bool:
    """Whether every worker's heartbeat is fresher than `hang_seconds` (none yet: not set up)."""
    now = time.time()
    beats = [path.stat().st_mtime for path in folder.glob("heartbeat-*")]
    return bool(beats) and all(now - beat < hang_seconds for beat in beats)
