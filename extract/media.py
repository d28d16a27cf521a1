"""FFmpeg access: find the binary, probe a file, decode frames and audio through pipes.

Probing parses the banner that `ffmpeg -i` prints, so `ffprobe` never has to be installed:
the imageio-ffmpeg wheel ships `ffmpeg` alone.
"""
from __future__ import annotations

import functools
import os
import shutil


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """The system `ffmpeg` when one is on PATH (or named by $DMVER_FFMPEG), else imageio-ffmpeg's static binary."""
    named = os.environ.get("DMVER_FFMPEG")
    if named:
        return named
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


import dataclasses
import re
import subprocess
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

DEFAULT_TIMEOUT = 120.0  # seconds of FFmpeg per video before it is killed as hung


class MediaError(RuntimeError):
    """A file FFmpeg cannot read the way a stage needs; the message says why in one line."""


class DecodeTimeout(MediaError):
    pass


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What `ffmpeg -i` says of a file. Width and height are as displayed, i.e. after rotation."""

    duration: float | None
    has_video: bool
    width: int = 0
    height: int = 0
    fps: float | None = None
    rotation: int = 0
    has_audio: bool = False
    audio_rate: int | None = None
    audio_channels: int | None = None


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):([\d.]+)")
_VIDEO = re.compile(r"Stream #\d+:\d+.*?: Video: .*?(\d{2,5})x(\d{2,5})")
_FPS = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_AUDIO = re.compile(r"Stream #\d+:\d+.*?: Audio: [^,]+, (\d+) Hz, ([^,]+)")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees|rotate\s*:\s*(-?\d+)", re.IGNORECASE)
_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "2.1": 3, "3.0": 3, "quad": 4, "4.0": 4, "5.0": 5, "5.1": 6,
                    "6.1": 7, "7.1": 8}


def _clean_error(stderr: str) -> str:
    """FFmpeg's last meaningful line, without the `[in#0 @ 0x...]` prefix."""
    lines = [re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", l).strip() for l in stderr.splitlines()]
    lines = [l for l in lines if l and not l.startswith("Error opening input file")]
    return lines[-1] if lines else "FFmpeg failed without a message"


def probe(path: str | os.PathLike, timeout: float = 30.0) -> MediaInfo:
    """Duration, size, frame rate, rotation and audio of a file, without ffprobe."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"file not found: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"empty file (0 bytes): {path}")
    try:
        run = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
                             capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DecodeTimeout(f"probing took over {timeout:.0f} s: {path}") from None
    text = run.stderr.decode("utf-8", errors="replace")
    if "Input #0" not in text:
        raise MediaError(f"not a readable media file ({_clean_error(text)}): {path}")
    m = _DURATION.search(text)
    duration = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) if m else None
    video = _VIDEO.search(text)
    audio = _AUDIO.search(text)
    fields: dict = dict(duration=duration, has_video=video is not None, has_audio=audio is not None)
    if video:
        line = text[video.start(): text.find("\n", video.start())]
        width, height = int(video[1]), int(video[2])
        rot = _ROTATION.search(text[video.start():])
        rotation = int(round(float(rot[1] or rot[2]))) % 360 if rot else 0
        if rotation in (90, 270):
            width, height = height, width
        fps = None
        for value, kilo, _ in _FPS.findall(line):
            fps = float(value) * (1000 if kilo else 1)
            break
        fields.update(width=width, height=height, fps=fps, rotation=rotation)
    if audio:
        layout = audio[2].strip().split("(")[0].strip()
        channels = _LAYOUT_CHANNELS.get(layout)
        if channels is None:
            n = re.match(r"(\d+) channels", layout)
            channels = int(n[1]) if n else 2
        fields.update(audio_rate=int(audio[1]), audio_channels=channels)
    return MediaInfo(**fields)


class _FFmpegPipe:
    """An FFmpeg process whose stdout is read in fixed-size records, killed after `timeout` s."""

    def __init__(self, args: Sequence[str], timeout: float):
        self.cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", *args]
        self.timeout = timeout
        self.timed_out = False
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._stderr: list[bytes] = []
        self._drain = threading.Thread(target=lambda: self._stderr.append(self.proc.stderr.read()), daemon=True)
        self._drain.start()
        self._timer = threading.Timer(timeout, self._kill)
        self._timer.daemon = True
        self._timer.start()

    def _kill(self) -> None:
        self.timed_out = True
        self.proc.kill()

    def records(self, size: int) -> Iterator[bytes]:
        while True:
            chunk = self.proc.stdout.read(size)
            if len(chunk) < size:
                return
            yield chunk

    def read_all(self) -> bytes:
        return self.proc.stdout.read()

    def close(self, what: str) -> None:
        """Wait for FFmpeg; raise on timeout, and on failure when `what` produced nothing usable."""
        self.proc.stdout.close()
        self.proc.wait()
        self._timer.cancel()
        self._drain.join(timeout=5)
        if self.timed_out:
            raise DecodeTimeout(f"{what}: FFmpeg took over {self.timeout:.0f} s and was killed")

    @property
    def error(self) -> str:
        return _clean_error(b"".join(self._stderr).decode("utf-8", errors="replace"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._timer.cancel()


def _clip_args(start: float | None, end: float | None) -> tuple[list[str], list[str]]:
    """Input seeking (fast and frame-accurate in current FFmpeg) plus an output duration."""
    before = ["-ss", f"{start:.6f}"] if start else []
    after = ["-t", f"{end - (start or 0.0):.6f}"] if end is not None else []
    return before, after


def _select_expr(indices: Sequence[int]) -> str:
    """An FFmpeg `select` expression passing exactly the frame numbers given (merged into ranges)."""
    ranges: list[list[int]] = []
    for i in sorted(set(indices)):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return "+".join(f"eq(n\\,{a})" if a == b else f"between(n\\,{a}\\,{b})" for a, b in ranges)


def decode_frames(path: str | os.PathLike, geometry_filter: str, width: int, height: int,
                  indices: Sequence[int] | None = None, gray: bool = False,
                  start: float | None = None, end: float | None = None,
                  max_frames: int = 20000, timeout: float = DEFAULT_TIMEOUT) -> list[np.ndarray]:
    """Decode in one pass, scaled and cropped by FFmpeg, keeping only the frame numbers in `indices`.

    Frame numbers count decoded frames from the clip's start. FFmpeg drops the frames that are
    not wanted before scaling (`select`), so a 1080p clip costs little more than its decoding.
    Rotation metadata is applied by FFmpeg before `geometry_filter`. Returns the frames in
    increasing frame-number order: uint8 `[height, width, 3]` RGB, or `[height, width]` if `gray`.
    With `indices=None` every frame is returned (at most `max_frames`).
    """
    before, after = _clip_args(start, end)
    filters = ([f"select='{_select_expr(indices)}'"] if indices is not None else []) + [geometry_filter]
    channels = 1 if gray else 3
    args = [*before, "-i", str(path), *after, "-map", "0:v:0", "-an", "-sn", "-dn",
            "-vf", ",".join(filters), "-fps_mode", "passthrough",
            "-f", "rawvideo", "-pix_fmt", "gray" if gray else "rgb24", "pipe:1"]
    size = width * height * channels
    shape = (height, width) if gray else (height, width, 3)
    frames = []
    with _FFmpegPipe(args, timeout) as pipe:
        for record in pipe.records(size):
            frames.append(np.frombuffer(record, np.uint8).reshape(shape))
            if len(frames) >= max_frames:
                break
        pipe.close(f"decoding {path}")
        if not frames:
            raise MediaError(f"no video frame could be decoded ({pipe.error}): {path}")
    return frames


def decode_audio(path: str | os.PathLike, channels: int, sample_rate: int, start: float | None = None,
                 end: float | None = None, timeout: float = DEFAULT_TIMEOUT) -> np.ndarray:
    """The first audio stream as float32 `[samples, channels]` (pass the probed rate and channels).

    Channels are kept as they are; mixing to mono is the front end's job (mean of channels,
    as the published VGGish front end does).
    """
    before, after = _clip_args(start, end)
    args = [*before, "-i", str(path), *after, "-map", "0:a:0", "-vn", "-sn", "-dn",
            "-ac", str(channels), "-ar", str(sample_rate), "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    with _FFmpegPipe(args, timeout) as pipe:
        raw = pipe.read_all()
        pipe.close(f"decoding audio of {path}")
        if pipe.proc.returncode != 0 and not raw:
            raise MediaError(f"audio could not be decoded ({pipe.error}): {path}")
    samples = np.frombuffer(raw[: len(raw) - len(raw) % (4 * channels)], np.float32).reshape(-1, channels)
    return samples
