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
from typing import Callable

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


# ----------------------------------------------------------------------------- one command: dmver

STEPS = ["manifest", "frames", "flow", "audio", "faces", "features", "weights", "list", "train", "fuse", "table",
         "report", "export", "predict"]


def _dmver(*args: str) -> subprocess.CompletedProcess:
    """The installed `dmver` when this environment has it (make venv), else the module it runs."""
    script = Path(sys.executable).with_name("dmver")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "extract.command"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_dmver_is_the_console_script_of_the_project():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = cfg["options.entry_points"]["console_scripts"]
    assert "dmver = extract.command:main" in [line.strip() for line in scripts.splitlines()]


def test_dmver_help_lists_every_step_with_one_line_each():
    done = _dmver("--help")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert set(STEPS) <= listed, done.stdout


def test_dmver_help_does_not_import_torch():
    code = "import sys; from extract import command; command.main(['--help']); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_dmver_step_help_and_unknown_step():
    frames = _dmver("frames", "--help")
    assert frames.returncode == 0 and "--num-frames" in frames.stdout, frames.stderr
    listing = _dmver("list")
    assert listing.returncode == 0 and "rgb" in listing.stdout, listing.stderr
    unknown = _dmver("frobnicate")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert len(unknown.stderr.strip().splitlines()) == 1 and "frobnicate" in unknown.stderr


@pytest.mark.parametrize("target,needs", [("manifest", "ROOT="), ("fuse", None), ("export", "OUT="), ("list", None)])
def test_make_has_a_target_for_every_step(target, needs):
    done = subprocess.run(["make", "-n", target, "MODALITIES=rgb flow text", "ROOT=/data/x", "OUT=models/x"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    if target in ("fuse", "export"):
        assert "--modalities rgb,flow,text" in done.stdout
    if needs:
        missing = subprocess.run(["make", "-n", target], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert needs in missing.stdout


# ----------------------------------------------------------------------------- every video failed


def test_every_video_failed_is_exit_3_and_stops_make(tmp_path):
    rows = [Video(id=f"gone{i}", path=str(tmp_path / f"gone{i}.mp4"), label="a", split="train") for i in range(2)]
    manifest.write_manifest(tmp_path / "m.csv", rows)
    done = _cmd("extract.frames", "--manifest", str(tmp_path / "m.csv"), "--work", str(tmp_path / "w"))
    assert done.returncode == cli.EXIT_ALL_FAILED == 3, done.stderr
    assert "error: every video failed in frames" in done.stderr
    made = subprocess.run(["make", "--no-print-directory", "frames", f"MANIFEST={tmp_path / 'm.csv'}",
                           f"WORK={tmp_path / 'w2'}", "PY=" + sys.executable, "STAMP="],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert made.returncode != 0, made.stdout + made.stderr


# ----------------------------------------------------------------------------- Ctrl-C


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """Twelve videos, enough that a stage with two workers is still busy a few seconds in."""
    root = tmp_path_factory.mktemp("many")
    rows = [Video(id=f"m{i}", path=str(tv.make_video(root / f"m{i}.mp4", seconds=2.0, seed=i)),
                  label="pos" if i % 2 else "neg", split="train") for i in range(12)]
    manifest.write_manifest(root / "manifest.csv", rows)
    return root / "manifest.csv"


def _as_from_a_terminal() -> None:
    """In the child before exec: Ctrl-C as a shell leaves it (default action, not blocked), whatever
    this test process inherited or set (a test runner, an earlier in-process Dask or joblib run)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _interrupt(args: list[str], started: Callable[[], bool], after: float = 0.3) -> subprocess.CompletedProcess:
    """Run `python -m args...` in a session of its own, wait until `started()` (at most 120 s) and
    `after` seconds more, then send SIGINT to its whole process group, as a terminal's Ctrl-C does."""
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, start_new_session=True, preexec_fn=_as_from_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while not started() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(after)
        assert proc.poll() is None, "it ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _one_interrupted_line(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == cli.EXIT_INTERRUPTED, done.stderr
    assert cli.INTERRUPTED in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr


@pytest.mark.parametrize("after", [0.3, 0.6])
def test_ctrl_c_while_a_stage_starts_its_workers(many, tmp_path, after):
    """The stage has claimed its folder and is starting two workers, which are still importing."""
    work = tmp_path / "w"
    done = _interrupt(["extract.frames", "--manifest", str(many), "--work", str(work), "--jobs", "2",
                       "--num-frames", "64", "--size", "112"],
                      lambda: (work / "frames" / "settings.json").exists(), after)
    _one_interrupted_line(done)


def test_ctrl_c_while_a_stage_works(many, tmp_path):
    work = tmp_path / "w"
    done = _interrupt(["extract.frames", "--manifest", str(many), "--work", str(work), "--jobs", "2",
                       "--num-frames", "64", "--size", "112"],
                      lambda: any((work / "frames").glob("*.npz")), after=0.0)
    _one_interrupted_line(done)


def test_ctrl_c_after_the_work_is_done_keeps_the_exit_code(tmp_path):
    """A Ctrl-C while the interpreter shuts down (worker pools joining) changes nothing: the exit
    code the run decided, at once, and no traceback from an exit handler."""
    (tmp_path / "sitecustomize.py").write_text(
        "import atexit, sys, time\n"
        "def _slow_exit():\n"
        "    sys.stderr.write('shutting down\\n'); sys.stderr.flush(); time.sleep(20)\n"
        "atexit.register(_slow_exit)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-m", "extract.frames", "--manifest", str(tmp_path / "absent.csv"),
                             "--work", str(tmp_path / "w")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=env, start_new_session=True, preexec_fn=_as_from_a_terminal)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("shutting down"):
                break
        assert seen and seen[-1].startswith("shutting down"), "".join(seen)
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=15)
        assert time.monotonic() - sent < 10, "the Ctrl-C did not end the exit handler's wait"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = "".join(seen) + rest
    assert proc.returncode == cli.EXIT_RUN_FAILED, err
    assert "absent.csv" in err and "Traceback" not in err and "KeyboardInterrupt" not in err, err


@pytest.fixture(scope="module")
def framed(many, tmp_path_factory) -> Path:
    from extract import frames, stage

    work = tmp_path_factory.mktemp("framed")
    stage.run_stage(frames.STAGE, manifest.read_manifest(many), work, frames.FrameSettings(num_frames=16, size=112),
                    jobs=2)
    return work


FEATURES = ["features.extract", "--modality", "rgb2d", "--weights", "random", "--device", "cpu", "--loaders", "2",
            "--videos-per-call", "1"]


def test_ctrl_c_while_the_feature_stage_imports_torch(many, framed):
    done = _interrupt([*FEATURES, "--manifest", str(many), "--work", str(framed)], lambda: True, 1.0)
    _one_interrupted_line(done)


def test_ctrl_c_while_the_feature_stage_works(many, framed):
    """Its DataLoader workers are preparing inputs when the Ctrl-C comes."""
    shards = framed / "features" / "rgb2d.shards"
    done = _interrupt([*FEATURES, "--manifest", str(many), "--work", str(framed)],
                      lambda: shards.is_dir() and any(shards.iterdir()))
    _one_interrupted_line(done)


# ----------------------------------------------------------------------------- quiet local Dask


def test_a_local_dask_stage_prints_its_summary_line_only(sample, tmp_path):
    """No scheduler INFO lines, no dashboard, no 'port 8787 is already in use' (held here when free)."""
    held = socket.socket()
    with contextlib.suppress(OSError):
        held.bind(("127.0.0.1", 8787))
        held.listen(1)
    try:
        done = _cmd("extract.frames", "--manifest", str(sample), "--work", str(tmp_path), "--backend", "dask",
                    "--jobs", "2", "--num-frames", "8", "--size", "32")
    finally:
        held.close()
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert len(done.stdout.splitlines()) == 1 and done.stdout.startswith("frames: done 4 / "), done.stdout


# ----------------------------------------------------------------------------- a modality nobody has


def test_training_text_without_captions_says_so(tmp_path):
    rows = [Video(id=f"v{i}", path=str(tmp_path / f"v{i}.mp4"), label="ab"[i % 2], split=("train", "val", "test")[i % 3])
            for i in range(12)]
    manifest.write_manifest(tmp_path / "m.csv", rows)
    made = _cmd("features.extract", "--modality", "text", "--manifest", str(tmp_path / "m.csv"), "--work",
                str(tmp_path / "w"), "--device", "cpu")
    assert made.returncode == 0, made.stderr
    done = _cmd("classify.train", "--modality", "text", "--head", "linear", "--manifest", str(tmp_path / "m.csv"),
                "--work", str(tmp_path / "w"))
    assert done.returncode == cli.EXIT_RUN_FAILED
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no captions" in error[0] and "text" in error[0], done.stderr
    assert "do not match" not in done.stderr
