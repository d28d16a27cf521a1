"""What a user meets first: options that would be silently ignored, a scheduler address that is
not a scheduler, the `dmver` command, quiet output, Ctrl-C, and a run where every video fails."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from extract import cli, manifest
from extract.manifest import Video
from tests import videos as tv

ROOT = Path(__file__).resolve().parents[1]


def _cmd(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """A manifest of four short videos."""
    root = tmp_path_factory.mktemp("media")
    rows = [Video(id=f"v{i}", path=str(tv.make_video(root / f"v{i}.mp4", seconds=1.0, seed=i)),
                  label="pos" if i % 2 else "neg", split="train") for i in range(4)]
    manifest.write_manifest(root / "manifest.csv", rows)
    return root / "manifest.csv"


@contextlib.contextmanager
def _not_a_scheduler(reply: bytes):
    """A TCP server on 127.0.0.1 that accepts and sends `reply` (b"": nothing), keeping each
    connection open; a bounded number of connections, closed when the block ends."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.5)
    held, stop = [], threading.Event()

    def serve():
        for _ in range(200):  # at most 100 s
            if stop.is_set() or len(held) >= 16:
                return
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)
            if reply:
                with contextlib.suppress(OSError):
                    conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


STAGE_COMMANDS = [("extract.frames", ()), ("extract.flow", ()), ("extract.audio", ()),
                  ("features.extract", ("--modality", "rgb", "--weights", "random"))]


@pytest.mark.parametrize("module,extra", STAGE_COMMANDS)
def test_scheduler_without_dask_backend_is_refused(sample, tmp_path, module, extra):
    done = _cmd(module, "--manifest", str(sample), "--work", str(tmp_path), "--scheduler", "tcp://127.0.0.1:1",
                *extra)
    assert done.returncode == cli.EXIT_USAGE, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--backend dask" in lines[0] and "tcp://127.0.0.1:1" in lines[0], done.stderr
    assert not (tmp_path / "frames").exists() and not (tmp_path / "features").exists()


@pytest.mark.parametrize("reply", [b"\xff" * 64, b""], ids=["garbage", "silent"])
@pytest.mark.parametrize("module,extra", [STAGE_COMMANDS[0], STAGE_COMMANDS[3]])
def test_an_address_that_is_not_a_scheduler_fails_quickly(sample, tmp_path, reply, module, extra):
    with _not_a_scheduler(reply) as address:
        started = time.monotonic()
        done = _cmd(module, "--manifest", str(sample), "--work", str(tmp_path), "--backend", "dask",
                    "--scheduler", address, "--connect-timeout", "3", *extra, timeout=120)
        seconds = time.monotonic() - started
    assert done.returncode == cli.EXIT_RUN_FAILED, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and lines[0].startswith("error:"), done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < 45, seconds
