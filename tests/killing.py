"""Killing a command mid-run, as a user's `kill -9` would, for the resume tests."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]


def kill_when(args: Sequence[str], ready: Callable[[], bool], timeout: float = 180.0, poll: float = 0.005) -> None:
    """Start `args` in the repository root and SIGKILL it as soon as `ready()` holds (or at the
    deadline); returns once the process is gone."""
    proc = subprocess.Popen(list(args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
