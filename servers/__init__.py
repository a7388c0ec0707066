"""The programs: the router, one family server per file, and the `open-speech` command.

Each is a module of this package with a `main()`, installed as a command (`open-speech-router`,
`open-speech-faster-whisper`, ...) and run as `python -m servers.<name>`; `python servers/<name>.py`
runs the same module (see `run_as_module`).
"""

import os
import sys
from pathlib import Path


def run_as_module(script: str) -> None:
    """Run `python servers/<name>.py` as `python -P -m servers.<name>`, in the same process.

    A script's folder comes first on `sys.path`, where faster_whisper.py, nemo.py and onnx.py would
    stand in for the packages they serve; as a module of the installed package, nothing does.
    """
    os.execv(sys.executable, [sys.executable, "-P", "-m", f"servers.{Path(script).stem}", *sys.argv[1:]])
