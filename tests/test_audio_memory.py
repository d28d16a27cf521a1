"""The audio stage on long files: bounded memory, and streamed output equal to the whole-signal one.

The stage reads the audio from FFmpeg's pipe a piece at a time; these tests check that its peak
memory does not grow with the file's length (an hour of audio in a subprocess, peak RSS measured
with `wait4`), and that the pieces change nothing: with pieces of a few milliseconds the `.npz`
members are byte for byte what the whole-signal computation (decode all, mix, resample, log-mel,
FLAC-encode) gives.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from extract import audio, cli, logmel, manifest, media, records
from extract.layout import Work
from extract.manifest import Video
from tests import videos as tv

REPO = Path(__file__).resolve().parents[1]
SETTINGS = audio.AudioSettings(timeout=60)
PEAK_LIMIT_MB = 1000          # per worker, whatever the length
GROWTH_LIMIT_MB = 100         # 60 min against 10 min (the whole-signal stage grew by about 2.7 GB)


def _ffmpeg(*args) -> None:
    subprocess.run([media.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *map(str, args)],
                   check=True, capture_output=True)


def _tone_and_noise(path: Path, seconds: float, rate: int = 16000, channels: int = 1, codec: str = "flac") -> Path:
    """A 440 Hz sine plus white noise (FFmpeg's lavfi sources), mono or with the noise on a second channel."""
    sine = f"sine=frequency=440:sample_rate={rate}:duration={seconds:g}"
    noise = f"anoisesrc=color=white:amplitude=0.05:seed=7:sample_rate={rate}:duration={seconds:g}"
    mix = "amix=inputs=2:normalize=0" if channels == 1 else "amerge=inputs=2"
    _ffmpeg("-f", "lavfi", "-i", sine, "-f", "lavfi", "-i", noise, "-filter_complex", mix, "-ac", channels,
            "-c:a", codec, path)
    return path


def _video(vid: str, path, **kw) -> Video:
    return Video(id=vid, path=str(path), label="a", split="train", **kw)


# ----------------------------------------------------------------------------- streamed == whole signal


def _whole_signal(video: Video) -> dict:
    """What the stage stored before it streamed: the whole track decoded at once, then the front end."""
    info = media.probe(video.path)
    rate, channels = info.audio_rate, info.audio_channels
    raw = subprocess.run(media.audio_command(video.path, channels, rate, video.start, video.end),
                         capture_output=True, check=True).stdout
    wave = np.frombuffer(raw[: len(raw) - len(raw) % (4 * channels)], np.float32).reshape(-1, channels)
    x16k = logmel.resample(logmel.to_mono(wave), rate)
    examples, padded = logmel.log_mel_examples_padded(x16k, audio.WAVEFORM_RATE, pad_short=True)
    return dict(examples=examples, has_audio=np.bool_(True), padded=np.bool_(padded),
                waveform_flac=audio.encode_waveform(x16k))


def _members(npz) -> dict:
    with zipfile.ZipFile(npz) as z:
        return {name: z.read(name) for name in z.namelist()}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    stereo = _tone_and_noise(root / "stereo48.mp4", 3.7, rate=48000, channels=2, codec="aac")
    return {
        "mono 44.1 kHz": _video("mono", tv.make_video(root / "mono44.mp4", seconds=4.3)),
        "stereo 48 kHz": _video("stereo", stereo),
        "16 kHz, no resampling": _video("pcm", _tone_and_noise(root / "pcm16k.mka", 5.1)),
        "shorter than one example": _video("short", tv.make_audio_only(root / "short.m4a", seconds=0.5)),
        "clip with start and end": _video("clip", stereo, start=0.8, end=3.1),
    }


@pytest.mark.parametrize("chunk_seconds", [0.01, 0.0371, 1.3])
@pytest.mark.parametrize("case", ["mono 44.1 kHz", "stereo 48 kHz", "16 kHz, no resampling",
                                  "shorter than one example", "clip with start and end"])
def test_streamed_output_equals_the_whole_signal_computation(clips, tmp_path, case, chunk_seconds):
    video = clips[case]
    out = tmp_path / "out.npz"
    note = audio.process(video, out, SETTINGS, chunk_seconds=chunk_seconds)
    want = _whole_signal(video)
    assert (note == audio.PADDED_NOTE) == bool(want["padded"])
    buf = io.BytesIO()
    np.savez(buf, **want)
    got, expected = _members(out), _members(buf)
    assert list(got) == list(expected)
    for name in expected:   # every member byte for byte: the examples bit-identical, the same FLAC stream
        assert got[name] == expected[name], f"{case}: {name} differs"
    with np.load(out) as z:
        assert z["examples"].shape[0] >= 1 and np.array_equal(z["examples"], want["examples"])


def test_pieces_of_any_size_give_the_whole_signal_front_end():
    rng = np.random.default_rng(3)
    for rate, channels, n in [(16000, 1, 16000 * 9 + 311), (44100, 2, 44100 * 5 + 17), (8000, 3, 7000), (22050, 1, 0)]:
        x = (0.3 * rng.standard_normal((n, channels))).astype(np.float32)
        want, want_padded = logmel.log_mel_examples_padded(x, rate, pad_short=True)
        cuts = np.unique(np.concatenate([[0, n], rng.integers(0, n + 1, size=25)]))
        to16k, mel = logmel.Mono16k(rate), logmel.ExampleStream()
        parts = [mel.push(to16k(x[a:b])) for a, b in zip(cuts[:-1], cuts[1:])]
        parts.append(mel.push(to16k.flush()))
        tail, padded = mel.finish(pad_short=True)
        got = np.concatenate(parts + [tail])
        assert padded == want_padded and got.shape == want.shape and np.array_equal(got, want), (rate, n)
        assert mel.count == want.shape[0]


# ----------------------------------------------------------------------------- memory


# Started from a small Python process, not from pytest: a child's peak RSS counts what it held
# between fork and exec, which for a child of pytest (torch loaded) is pytest's whole size.
_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=sys.stderr)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _peak_mb(src: Path, tmp_path: Path, name: str) -> tuple[float, Path]:
    """Run `python -m extract.audio` on one file in a fresh process; its peak RSS in MB (wait4)."""
    folder = tmp_path / name
    folder.mkdir()
    m = manifest.write_manifest(folder / "m.csv", [_video(name, src)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "extract.audio", "--manifest", str(m),
                           "--work", str(folder / "w"), "--jobs", "1"], capture_output=True, text=True, env=env,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    code, kib = map(int, done.stdout.split())
    assert code == 0, done.stderr
    return kib / 1024, folder / "w"


def _examples_shape(npz: Path) -> tuple:
    """The `examples` member's shape from its header alone (the long file's examples are 90 MB)."""
    with zipfile.ZipFile(npz) as z, z.open("examples.npy") as f:
        np.lib.format.read_magic(f)
        return np.lib.format.read_array_header_1_0(f)[0]


def test_peak_memory_does_not_grow_with_the_audio_length(tmp_path):
    short = _tone_and_noise(tmp_path / "ten_minutes.mka", 600)
    long = _tone_and_noise(tmp_path / "one_hour.mka", 3600)
    short_mb, short_work = _peak_mb(short, tmp_path, "ten")
    long_mb, long_work = _peak_mb(long, tmp_path, "sixty")
    print(f"audio stage peak RSS: 10 min {short_mb:.0f} MB, 60 min {long_mb:.0f} MB")
    assert long_mb < PEAK_LIMIT_MB, f"60 min of audio took {long_mb:.0f} MB"
    assert long_mb - short_mb < GROWTH_LIMIT_MB, f"10 min: {short_mb:.0f} MB, 60 min: {long_mb:.0f} MB"
    # the outputs are complete: every 0.96 s example, and the whole waveform
    for seconds, work, vid in ((600, short_work, "ten"), (3600, long_work, "sixty")):
        n = seconds * 16000
        out = Work(work).output("audio", vid, ".npz")
        assert _examples_shape(out) == (1 + (n - logmel.MIN_SAMPLES) // logmel.EXAMPLE_STEP, 96, 64)
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".tmp-")]
    assert audio.load(short_work, "ten", kind="waveform").shape == (600 * 16000,)


# ----------------------------------------------------------------------------- the time limit


def test_time_limit_counts_waiting_for_ffmpeg_not_the_readers_work(clips):
    video = clips["16 kHz, no resampling"]
    started, pieces = time.monotonic(), 0
    for _ in media.audio_chunks(video.path, 1, 16000, timeout=2.0, chunk_samples=16000):
        pieces += 1
        time.sleep(0.5)   # the reader's own work: 2.5 s in all, more than the limit
    assert pieces == 6 and time.monotonic() - started >= 2.5


def test_hung_ffmpeg_is_killed_in_the_audio_stage(clips, tmp_path):
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    m = manifest.write_manifest(tmp_path / "m.csv", [clips["mono 44.1 kHz"]])
    env = {**os.environ, "PYTHONPATH": str(REPO), "DMVER_FFMPEG": str(fake)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "extract.audio", "--manifest", str(m), "--work", str(tmp_path / "w"),
                           "--timeout", "1", "--jobs", "1"], capture_output=True, text=True, env=env, cwd=REPO)
    assert time.monotonic() - started < 20
    assert done.returncode == cli.EXIT_ALL_FAILED, done.stderr  # its one video failed
    assert "DecodeTimeout" in records.read_failures(tmp_path / "w", "audio")["mono"]
    assert not [p.name for p in (tmp_path / "w" / "audio").iterdir() if p.name.startswith(".tmp-")]
