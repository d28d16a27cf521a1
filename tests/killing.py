"""Killing a command mid-run, as a user's `kill -9` would, for the resume tests."""
from __future__ import annotations

import signal
import time
from typing import Callable

from tests.cli import start_cli


def kill_when(module: str, *args: object, ready: Callable[[], bool], timeout: float = 180.0,
              poll: float = 0.005) -> None:
    """Start `python -m module args...` (tests.cli.start_cli) and SIGKILL it as soon as `ready()`
    holds (or at the deadline); returns once the process is gone."""
    proc = start_cli(module, *args)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(poll)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
