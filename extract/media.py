"""Media access: probe a file with PyAV, decode frames and audio with FFmpeg through pipes.

Probing opens the file with PyAV (`av`, FFmpeg's libraries in a wheel): streams, `average_rate`,
duration, the declared frame count and the display-matrix rotation, read from the container
instead of parsed from the text `ffmpeg -i` prints (which changes between FFmpeg releases).
Decoding runs the `ffmpeg` binary (the system one, or the one imageio-ffmpeg ships) with a
command line built by `ffmpeg-python`: one pass, FFmpeg's `select` filter dropping the unwanted
frames before scaling, raw frames or samples on a pipe, killed after a time limit.
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
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

DEFAULT_TIMEOUT = 120.0  # seconds of FFmpeg per video before it is killed as hung
_GLOBAL_ARGS = ("-hide_banner", "-nostdin", "-loglevel", "error")


class MediaError(RuntimeError):
    """A file FFmpeg cannot read the way a stage needs; the message says why in one line."""


class DecodeTimeout(MediaError):
    pass


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What the container says of a file. Width and height are as displayed, i.e. after rotation.

    `frames` is the video stream's declared frame count (0 when the container does not store
    one, as Matroska does not); `video_duration` and `audio_duration` are the streams' own
    durations in seconds, None when the container gives none (then `duration` is the best guess).
    """

    duration: float | None
    has_video: bool
    width: int = 0
    height: int = 0
    fps: float | None = None
    rotation: int = 0
    has_audio: bool = False
    audio_rate: int | None = None
    audio_channels: int | None = None
    frames: int = 0
    video_duration: float | None = None
    audio_duration: float | None = None


def _clean_error(stderr: str) -> str:
    """FFmpeg's last meaningful line, without the `[in#0 @ 0x...]` prefix."""
    lines = [re.sub(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*", "", l).strip() for l in stderr.splitlines()]
    lines = [l for l in lines if l and not l.startswith("Error opening input file")]
    return lines[-1] if lines else "FFmpeg failed without a message"


def _seconds(value, time_base) -> float | None:
    return float(value * time_base) if value is not None and time_base is not None else None


def _first_frame_rotation(container, stream) -> int:
    """The display-matrix rotation in degrees, 0..359, counter-clockwise as FFmpeg reports it
    (a phone's `rotate=90` tag reads 270), from the first decoded frame: FFmpeg hands the
    stream's display matrix to every decoded frame."""
    try:
        for frame in container.decode(stream):
            return int(round(frame.rotation)) % 360
    except Exception:  # undecodable: decoding will say so with FFmpeg's own message
        return 0
    return 0


def probe(path: str | os.PathLike, timeout: float = 30.0) -> MediaInfo:
    """Duration, size, frame rate, frame count, rotation and audio of a file (PyAV, no ffprobe)."""
    import av

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MediaError(f"file not found: {path}") from None
    except OSError as exc:
        raise MediaError(f"cannot read ({exc.strerror}): {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(f"not a regular file (a folder, device or pipe): {path}")
    if st.st_size == 0:
        raise MediaError(f"empty file (0 bytes): {path}")
    try:
        container = av.open(str(path), timeout=(timeout, timeout))
    except av.error.ExitError:
        raise DecodeTimeout(f"probing took over {timeout:.0f} s: {path}") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MediaError(f"not a readable media file ({reason}): {path}") from None
    with container:
        duration = container.duration / 1e6 if container.duration is not None else None
        fields: dict = dict(duration=duration, has_video=bool(container.streams.video),
                            has_audio=bool(container.streams.audio))
        if container.streams.video:
            v = container.streams.video[0]
            width, height = v.codec_context.width, v.codec_context.height
            rate = v.average_rate or v.guessed_rate or v.base_rate
            rotation = _first_frame_rotation(container, v)
            if rotation in (90, 270):
                width, height = height, width
            fields.update(width=width, height=height, fps=float(rate) if rate else None, rotation=rotation,
                          frames=int(v.frames or 0), video_duration=_seconds(v.duration, v.time_base))
        if container.streams.audio:
            a = container.streams.audio[0]
            layout = a.codec_context.layout
            channels = getattr(layout, "nb_channels", None) or len(getattr(layout, "channels", ())) or 2
            fields.update(audio_rate=int(a.codec_context.sample_rate or a.rate or 0) or None, audio_channels=channels,
                          audio_duration=_seconds(a.duration, a.time_base))
    return MediaInfo(**fields)


class _FFmpegPipe:
    """An FFmpeg process (a full command line) whose stdout is read in fixed-size records, killed after `timeout` s."""

    def __init__(self, cmd: Sequence[str], timeout: float):
        self.cmd = list(cmd)
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


def _input(path: str | os.PathLike, start: float | None):
    """The input node: input seeking with `-ss` (fast and frame-accurate in current FFmpeg)."""
    import ffmpeg

    return ffmpeg.input(str(path), **({"ss": f"{start:.6f}"} if start else {}))


def _duration(start: float | None, end: float | None) -> dict:
    """Output options limiting the clip to `end` (seconds from the file's start)."""
    return {"t": f"{end - (start or 0.0):.6f}"} if end is not None else {}


def command_line(stream) -> list[str]:
    """The full FFmpeg argument list of an ffmpeg-python output node (global options first)."""
    import ffmpeg

    return [ffmpeg_exe(), *_GLOBAL_ARGS, *ffmpeg.get_args(stream)]


def _select_expr(indices: Sequence[int], from_frame: int | None = None) -> str:
    """A `select` expression passing exactly the frame numbers given (merged into ranges), and
    with `from_frame` every frame from that number on."""
    ranges: list[list[int]] = []
    for i in sorted(set(indices)):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    terms = [f"eq(n,{a})" if a == b else f"between(n,{a},{b})" for a, b in ranges]
    if from_frame is not None:
        terms.append(f"gte(n,{from_frame})")
    return "+".join(terms) or "0"


FilterSpec = tuple  # (name, positional args, keyword args)


def parse_filters(chain: str | Sequence[FilterSpec]) -> list[FilterSpec]:
    """`"scale=256:455:flags=bilinear,crop=224:224:16:115"` -> [("scale", ("256", "455"), {"flags": "bilinear"}), ...].

    Structured specs are passed through; ffmpeg-python escapes their values itself."""
    if not isinstance(chain, str):
        return [tuple(f) for f in chain]
    specs = []
    for part in filter(None, chain.split(",")):
        name, _, arg_text = part.partition("=")
        args, kwargs = [], {}
        for a in filter(None, arg_text.split(":")):
            key, eq, value = a.partition("=")
            if eq:
                kwargs[key] = value
            else:
                args.append(a)
        specs.append((name, tuple(args), kwargs))
    return specs


def frames_command(path: str | os.PathLike, geometry: str | Sequence[FilterSpec], indices: Sequence[int] | None = None,
                   gray: bool = False, start: float | None = None, end: float | None = None,
                   count_from: int | None = None) -> list[str]:
    """The FFmpeg command of `decode_frames`: one pass, `select`, then the geometry, raw frames to stdout."""
    import ffmpeg

    video = _input(path, start)["v:0"]
    if indices is not None:
        video = video.filter("select", _select_expr(indices, count_from))
    for name, args, kwargs in parse_filters(geometry):
        video = video.filter(name, *args, **kwargs)
    out = ffmpeg.output(video, "pipe:1", format="rawvideo", pix_fmt="gray" if gray else "rgb24",
                        fps_mode="passthrough", **_duration(start, end))
    return command_line(out)


def audio_command(path: str | os.PathLike, channels: int, sample_rate: int, start: float | None = None,
                  end: float | None = None) -> list[str]:
    """The FFmpeg command of `decode_audio`: the first audio stream as f32le samples on stdout."""
    import ffmpeg

    out = ffmpeg.output(_input(path, start)["a:0"], "pipe:1", format="f32le", acodec="pcm_f32le",
                        ac=int(channels), ar=int(sample_rate), **_duration(start, end))
    return command_line(out)


@dataclasses.dataclass
class DecodedFrames:
    """`decode_frames(..., count_from=N)`: the wanted frames, and how many frames from N on were decoded."""
    frames: list
    beyond: int


def decode_frames(path: str | os.PathLike, geometry_filter: str | Sequence[FilterSpec], width: int, height: int,
                  indices: Sequence[int] | None = None, gray: bool = False,
                  start: float | None = None, end: float | None = None,
                  max_frames: int = 20000, timeout: float = DEFAULT_TIMEOUT,
                  count_from: int | None = None):
    """Decode in one pass, scaled and cropped by FFmpeg, keeping only the frame numbers in `indices`.

    Frame numbers count decoded frames from the clip's start. FFmpeg drops the frames that are
    not wanted before scaling (`select`), so a 1080p clip costs little more than its decoding.
    Rotation metadata is applied by FFmpeg before `geometry_filter` (a filter chain string such
    as `scale=..,crop=..`, or (name, args, kwargs) specs). Returns the frames in increasing
    frame-number order: uint8 `[height, width, 3]` RGB, or `[height, width]` if `gray`.
    With `indices=None` every frame is returned (at most `max_frames`).

    With `count_from=N` (all `indices` below N), every frame numbered N or more is decoded
    too but only counted, not kept: the result is a `DecodedFrames` whose `beyond` says how
    many frames the stream has past N (0 when it ends before), which is how a container that
    under-states its length is caught without a second pass.
    """
    if count_from is not None and indices is None:
        raise ValueError("count_from needs indices")
    if count_from is not None and indices and max(indices) >= count_from:
        raise ValueError("count_from must be above every wanted frame number")
    cmd = frames_command(path, geometry_filter, indices, gray, start, end, count_from)
    channels = 1 if gray else 3
    size = width * height * channels
    shape = (height, width) if gray else (height, width, 3)
    keep = len(set(indices)) if indices is not None else max_frames
    frames, beyond = [], 0
    with _FFmpegPipe(cmd, timeout) as pipe:
        for record in pipe.records(size):
            if len(frames) < keep:
                frames.append(np.frombuffer(record, np.uint8).reshape(shape))
            elif count_from is not None:
                beyond += 1
            else:
                break
        pipe.close(f"decoding {path}")
        if not frames:
            raise MediaError(f"no video frame could be decoded ({pipe.error}): {path}")
    return DecodedFrames(frames, beyond) if count_from is not None else frames


class _WaitedPipe(_FFmpegPipe):
    """An FFmpeg pipe whose time limit counts only the time spent waiting for FFmpeg's output.

    A reader that works on each piece before asking for the next (the audio stage computing
    log-mels while FFmpeg waits on a full pipe) is not charged for its own work: the limit
    still catches a hung FFmpeg, whatever the length of the file."""

    def __init__(self, cmd: Sequence[str], timeout: float):
        super().__init__(cmd, timeout)
        self._timer.cancel()   # replaced by one timer per `fill`, for what is left of the limit
        self.waited = 0.0

    def fill(self, buf) -> int:
        """Read into the writable buffer `buf` until it is full; the bytes read (fewer at the end
        of the stream, or when the time limit ran out and FFmpeg was killed)."""
        timer = threading.Timer(max(0.0, self.timeout - self.waited), self._kill)
        timer.daemon = True
        started = time.monotonic()
        timer.start()
        try:
            return self.proc.stdout.readinto(buf) or 0   # a buffered reader: loops until full or the end
        finally:
            timer.cancel()
            self.waited += time.monotonic() - started


#: Seconds of audio per piece of `audio_chunks` by default (a micro-video is one piece) ...
AUDIO_CHUNK_SECONDS = 60.0
#: ... and at most this many bytes of decoded float32 samples (many channels at a high rate).
AUDIO_CHUNK_BYTES = 64 << 20


def audio_chunks(path: str | os.PathLike, channels: int, sample_rate: int, start: float | None = None,
                 end: float | None = None, timeout: float = DEFAULT_TIMEOUT,
                 chunk_samples: int | None = None) -> Iterator[np.ndarray]:
    """The first audio stream in consecutive float32 `[<= chunk_samples, channels]` pieces.

    What `decode_audio` returns, read from FFmpeg's pipe a piece at a time, so memory does not
    grow with the file's length (default piece: `AUDIO_CHUNK_SECONDS` of audio, at most
    `AUDIO_CHUNK_BYTES`). `timeout` counts the seconds spent waiting for FFmpeg, not those the
    caller spends on each piece. Raises `MediaError` when FFmpeg fails before giving any
    sample, `DecodeTimeout` (after the pieces read so far) when it was killed for taking too long."""
    channels = int(channels)
    if chunk_samples is None:
        chunk_samples = max(1, min(int(AUDIO_CHUNK_SECONDS * sample_rate), AUDIO_CHUNK_BYTES // (4 * channels)))
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be at least 1, got {chunk_samples}")
    cmd = audio_command(path, channels, sample_rate, start, end)
    got_any = False
    with _WaitedPipe(cmd, timeout) as pipe:
        full = True
        while full:
            # not zeroed: the pages a short file never fills are never touched
            piece = np.empty((chunk_samples, channels), np.float32)
            with memoryview(piece).cast("B") as view:
                read = pipe.fill(view)
            full, n = read == piece.nbytes, read // (4 * channels)   # a trailing partial sample is dropped
            if n:
                got_any = True
                yield piece[:n]
        pipe.close(f"decoding audio of {path}")
        if pipe.proc.returncode != 0 and not got_any:
            raise MediaError(f"audio could not be decoded ({pipe.error}): {path}")


def decode_audio(path: str | os.PathLike, channels: int, sample_rate: int, start: float | None = None,
                 end: float | None = None, timeout: float = DEFAULT_TIMEOUT) -> np.ndarray:
    """The first audio stream as float32 `[samples, channels]` (pass the probed rate and channels).

    Channels are kept as they are; mixing to mono is the front end's job (mean of channels,
    as the published VGGish front end does). The whole track in memory: for long files, read
    it with `audio_chunks`.
    """
    pieces = list(audio_chunks(path, channels, sample_rate, start, end, timeout))
    return np.concatenate(pieces) if pieces else np.zeros((0, int(channels)), np.float32)
