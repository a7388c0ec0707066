"""Temporary folders of open-speech's processes, and the sweep of those that killed runs left behind.

Each folder is named `open-speech-<what>-<pid>-XXXX` after the process that made it, which removes it
when it stops. A process killed with SIGKILL cannot: the next server to start on the machine removes
the folders whose process is gone (`sweep`), and only those: other programs' folders are never touched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import psutil

logger = logging.getLogger("open_speech.scratch")
PREFIX = "open-speech-"
_OWNED = re.compile(rf"{PREFIX}[a-z-]+?-(\d+)-[^/]+")


def folder(what: str, parent: str | None = None) -> Path:
    """A new folder for `what` (e.g. "server", "metrics-router"), named after this process."""
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{what}-{os.getpid()}-", dir=parent))


def sweep() -> None:
    """Remove the folders of this project in the temporary folder whose process no longer runs."""
    for path in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        match = _OWNED.fullmatch(path.name)
        if match and path.is_dir() and not psutil.pid_exists(int(match[1])):
            logger.info("removing %s, left by a run that was killed", path)
            shutil.rmtree(path, ignore_errors=True)
