"""Small test media made with the FFmpeg binary, for every stage's tests (good and bad input).

Frames are rendered with numpy and are deterministic, so a test can predict what it decodes:

* background: a blocky, seed-dependent texture (+-10 levels) on a grey level `frame_level(i)`
  that steps by 6 per frame (pattern 'moving') or stays at 128 (pattern 'static');
* a red block `MARKER_RGB` in the top-left corner (the top quarter rows, left quarter columns):
  it shows channel order and orientation;
* a blue vertical bar `BAR_RGB` below the marker rows, `bar_width(w)` wide, its left edge at
  `bar_x(i, w)`: it moves `bar_speed(w)` px per frame to the right (wrapping) for 'moving' and
  stays at x = w // 2 for 'static'.

`render_frame(i, w, h, pattern, seed)` is exactly what `make_video` feeds FFmpeg (as rgb24);
`displayed(frame, rotate)` is what a decoder that honours the rotation metadata shows.
Audio, when present, is a 440 Hz sine at 44.1 kHz mono from FFmpeg's `sine` source
(`TONE_HZ`), as long as the video.

Every maker returns the Path it wrote. `describe(path)` reads the `ffmpeg -i` banner
(container duration, codecs, size, fps, rotation) and `frame_times(path)` the video frames'
presentation times, so tests need no ffprobe.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np

from extract.media import ffmpeg_exe

MARKER_RGB = (220, 30, 30)
BAR_RGB = (30, 30, 220)
TONE_HZ = 440.0
AUDIO_RATE = 44100


# ----------------------------------------------------------------------------- frames


def frame_level(i: int, pattern: str = "moving") -> int:
    """Background grey level of frame i (before the texture)."""
    return 128 if pattern == "static" else 40 + (6 * i) % 180


def bar_width(width: int) -> int:
    return max(2, width // 12)


def bar_speed(width: int) -> int:
    return max(1, width // 48)


def bar_x(i: int, width: int, pattern: str = "moving") -> int:
    return width // 2 if pattern == "static" else (bar_speed(width) * i) % width


def _texture(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(-10, 11, size=(-(-height // 8), -(-width // 8), 1), dtype=np.int16)
    return np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)[:height, :width]


def render_frame(i: int, width: int = 96, height: int = 64, pattern: str = "moving", seed: int = 0,
                 _texture_cache: dict = {}) -> np.ndarray:
    """Frame i as uint8 RGB `[height, width, 3]`."""
    if pattern not in ("moving", "static"):
        raise ValueError(f"pattern must be 'moving' or 'static', got {pattern!r}")
    key = (width, height, seed)
    if key not in _texture_cache:
        _texture_cache.clear()
        _texture_cache[key] = _texture(width, height, seed)
    frame = np.clip(_texture_cache[key] + frame_level(i, pattern), 0, 255).astype(np.uint8)
    frame = np.repeat(frame, 3, axis=2)
    frame[: max(1, height // 4), : max(1, width // 4)] = MARKER_RGB
    x0, bw = bar_x(i, width, pattern), bar_width(width)
    cols = (x0 + np.arange(bw)) % width
    frame[max(1, height // 4):, cols] = BAR_RGB
    return frame


def displayed(frame: np.ndarray, rotate: int | None) -> np.ndarray:
    """The frame as shown by a player that honours `rotate` (degrees clockwise, as the
    legacy `rotate` tag of phone videos): FFmpeg's decoder applies it by default."""
    return frame if not rotate else np.ascontiguousarray(np.rot90(frame, k=-(int(rotate) // 90)))


# ----------------------------------------------------------------------------- ffmpeg


def _ffmpeg(args: list, stdin: bytes | None = None) -> None:
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *(["-nostdin"] if stdin is None else []), *map(str, args)]
    done = subprocess.run(command, input=stdin, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({done.returncode}): {' '.join(command)}\n{done.stderr.decode(errors='replace')[-2000:]}")


def _video_codec_args(codec: str, width: int, height: int) -> list:
    if codec == "libx264":
        # yuv420p needs even sizes; 4:4:4 (High 4:4:4 profile) takes any size
        pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        return ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-pix_fmt", pix_fmt]
    if codec == "mpeg4":
        return ["-c:v", "mpeg4", "-q:v", "3", "-pix_fmt", "yuv420p"]
    return ["-c:v", codec, "-pix_fmt", "yuv420p"]


def _audio_codec_args(path: Path) -> list:
    return ["-c:a", "libmp3lame" if path.suffix.lower() == ".avi" else "aac", "-b:a", "64k"]


def _sine(seconds: float) -> list:
    return ["-f", "lavfi", "-i", f"sine=frequency={TONE_HZ:g}:sample_rate={AUDIO_RATE}:duration={seconds:g}"]


def make_video(path, width: int = 96, height: int = 64, fps: float = 30, seconds: float = 1.0, audio: bool = True,
               rotate: int | None = None, codec: str = "libx264", pattern: str = "moving", seed: int = 0,
               frames: int | None = None, faststart: bool = False) -> Path:
    """A CFR video of `frames` (default round(seconds * fps)) frames `render_frame(0..)`.

    `rotate` (90, 180, 270: degrees clockwise, like a phone's `rotate` tag) is written as
    display-matrix metadata by a stream-copy remux (`-display_rotation`, counter-clockwise, = -rotate):
    the stored frames stay `width x height`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * fps)) if frames is None else int(frames)
    raw = b"".join(render_frame(i, width, height, pattern, seed).tobytes() for i in range(n))
    target = path.with_name(f".{path.stem}.norot{path.suffix}") if rotate else path
    args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "pipe:0"]
    if audio:
        args += _sine(n / fps)
    args += ["-map", "0:v:0", *(["-map", "1:a:0"] if audio else [])]
    args += _video_codec_args(codec, width, height)
    if audio:
        args += _audio_codec_args(path)
    if faststart:
        args += ["-movflags", "+faststart"]
    _ffmpeg([*args, target], stdin=raw)
    if rotate:
        _ffmpeg(["-display_rotation:v:0", f"{-int(rotate)}", "-i", target, "-map", "0", "-c", "copy", path])
        target.unlink()
    return path


def make_audio_only(path, seconds: float = 1.0) -> Path:
    """An AAC stream (440 Hz sine, 44.1 kHz mono) and no video stream, in the container of the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _ffmpeg([*_sine(seconds), *_audio_codec_args(path), path])
    return path


def make_truncated(path, fraction: float = 0.5, faststart: bool = False) -> Path:
    """A valid 2 s mp4 cut to its first `fraction` of bytes.

    Without `faststart` the index (moov) sits at the end and is cut off: the file cannot be
    opened. With it the index survives and only the frames past the cut are missing."""
    path = Path(path)
    whole = path.with_name(f".{path.stem}.whole{path.suffix}")
    make_video(whole, seconds=2.0, faststart=faststart)
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def make_understated_mkv(path, seconds: float = 10.0, declared: float = 1.0, fps: float = 30, audio: bool = True) -> Path:
    """A Matroska file of `seconds` s (`render_frame(0..)`, and the sine when `audio`) whose
    Segment Duration element says `declared` s: a container that understates its length.

    Matroska stores no frame count, so a reader that trusts the container sees `declared` s."""
    import struct

    path = Path(path)
    make_video(path, seconds=seconds, fps=fps, audio=audio)
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")  # Duration (0x4489), an 8-byte float, in TimecodeScale units (ms)
    if at < 0:
        raise RuntimeError(f"no Segment Duration element in {path}")
    written = struct.unpack(">d", data[at + 3: at + 11])[0]
    if abs(written - seconds * 1000) > 100:
        raise RuntimeError(f"{path}: found Duration {written} ms, expected about {seconds * 1000} ms")
    data[at + 3: at + 11] = struct.pack(">d", declared * 1000.0)
    path.write_bytes(bytes(data))
    return path


def make_nan_audio_mkv(path, seconds: float = 2.0, rate: int = 16000, nan_every: int = 1000) -> Path:
    """A Matroska video of `seconds` s whose audio is raw `pcm_f32le` (16 kHz mono): a 440 Hz sine
    with every `nan_every`-th sample NaN (a float track no decoder cleans up)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    silent = path.with_name(f".{path.stem}.video.mkv")
    raw = path.with_name(f".{path.stem}.f32")
    make_video(silent, seconds=seconds, audio=False)
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype("<f4")
    wave[::nan_every] = np.nan
    raw.write_bytes(wave.tobytes())
    try:
        _ffmpeg(["-i", silent, "-f", "f32le", "-ar", str(rate), "-ac", "1", "-i", raw,
                 "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "pcm_f32le", path])
    finally:
        silent.unlink(missing_ok=True)
        raw.unlink(missing_ok=True)
    return path


def make_zero_byte(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_text_as_mp4(path) -> Path:
    """A text file with a video file's name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("This is not a video.\nJust some text with an .mp4 name.\n" * 20, encoding="utf-8")
    return path


def make_one_frame_video(path, width: int = 96, height: int = 64, audio: bool = False) -> Path:
    """A single frame (`render_frame(0)`); with `audio`, 1/30 s of sine."""
    return make_video(path, width=width, height=height, frames=1, audio=audio)


VFR_SPLIT = 15      # frames 0..14 at 30 fps, then 10 frames at 10 fps


def vfr_times() -> list:
    """Presentation times (s) of make_vfr_video's frames: 15 at 1/30 s, then 10 at 1/10 s (1.5 s in all)."""
    return [i / 30 for i in range(VFR_SPLIT)] + [0.5 + k / 10 for k in range(10)]


def make_vfr_video(path, width: int = 96, height: int = 64, audio: bool = True) -> Path:
    """Variable frame rate: 25 frames `render_frame(0..24)` at the times `vfr_times()`.

    Frames are piped at 30 fps and retimed by `setpts`; `-fps_mode passthrough` keeps the
    uneven timestamps (no frame duplicated or dropped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(vfr_times())
    raw = b"".join(render_frame(i, width, height).tobytes() for i in range(n))
    args = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", "30", "-i", "pipe:0"]
    if audio:
        args += _sine(1.6)
    args += ["-map", "0:v:0", *(["-map", "1:a:0"] if audio else [])]
    args += ["-vf", rf"setpts=if(lt(N\,{VFR_SPLIT})\,N/30\,{VFR_SPLIT / 30:g}+(N-{VFR_SPLIT})/10)/TB",
             "-fps_mode", "passthrough", *_video_codec_args("libx264", width, height)]
    if audio:
        args += _audio_codec_args(path)
    _ffmpeg([*args, path], stdin=raw)
    return path


def make_4k_clip(path, frames: int = 6, audio: bool = False) -> Path:
    """3840x2160, 30 fps, `frames` frames (0.2 s), libx264 ultrafast."""
    return make_video(path, width=3840, height=2160, frames=frames, audio=audio)


def make_odd_size(path, width: int = 721, height: int = 561, codec: str = "libx264", seconds: float = 0.5,
                  audio: bool = False) -> Path:
    """Odd dimensions: libx264 in yuv444p (4:2:0 needs even sizes), or 'mpeg4' in yuv420p."""
    return make_video(path, width=width, height=height, seconds=seconds, codec=codec, audio=audio)


# ----------------------------------------------------------------------------- inspection


def banner(path) -> str:
    """What `ffmpeg -i PATH` prints about the input (it exits 1: no output is named)."""
    done = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True)
    return done.stderr.decode(errors="replace")


def describe(path) -> dict:
    """`{'readable', 'duration', 'video': {codec, pix_fmt, width, height, fps, rotation} | None,
    'audio': {codec, rate, channels} | None}` from the banner."""
    text = banner(path)
    info = {"readable": "Input #0" in text, "duration": None, "video": None, "audio": None}
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    if m:
        info["duration"] = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    m = re.search(r"Stream #\d+:\d+.*?: Video: (\w+)[^\n]*?, (\w+)(?:\([^)]*\))?, (\d+)x(\d+)[^\n]*", text)
    if m:
        fps = re.search(r"([\d.]+) fps", m[0])
        rotation = re.search(r"rotation of (-?[\d.]+) degrees", text)
        info["video"] = {"codec": m[1], "pix_fmt": m[2], "width": int(m[3]), "height": int(m[4]),
                         "fps": float(fps[1]) if fps else None,
                         "rotation": float(rotation[1]) if rotation else 0.0}
    m = re.search(r"Stream #\d+:\d+.*?: Audio: (\w+)[^\n]*?, (\d+) Hz, ([^,\n]+)", text)
    if m:
        channels = {"mono": 1, "stereo": 2}.get(m[3].strip(), m[3].strip())
        info["audio"] = {"codec": m[1], "rate": int(m[2]), "channels": channels}
    return info


def frame_times(path) -> list:
    """Presentation times (s) of every video frame, as decoded (no frame-rate conversion)."""
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path), "-map", "0:v:0",
               "-fps_mode", "passthrough", "-f", "framecrc", "-"]
    out = subprocess.run(command, capture_output=True, check=True).stdout.decode()
    tb = re.search(r"#tb 0: (\d+)/(\d+)", out)
    scale = int(tb[1]) / int(tb[2])
    return [int(line.split(",")[2]) * scale for line in out.splitlines() if line and not line.startswith("#")]


def decode_frames(path, autorotate: bool = True, size: tuple | None = None) -> np.ndarray:
    """All video frames as uint8 RGB `[T, H, W, 3]` (FFmpeg's rotation applied unless
    `autorotate=False`); `size=(w, h)` scales them (area averaging) to keep big videos cheap."""
    scale = []
    if size:                                    # the scaler runs after the rotation: no probe needed
        w, h = size
        scale = ["-vf", f"scale={w}:{h}:flags=area"]
    else:
        info = describe(path)["video"]
        w, h = info["width"], info["height"]
        if autorotate and int(round(info["rotation"])) % 180 != 0:
            w, h = h, w
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin",
               *([] if autorotate else ["-noautorotate"]), "-i", str(path),
               "-map", "0:v:0", *scale, "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    out = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)


def decode_audio(path, rate: int = 16000, channels: int | None = None) -> np.ndarray:
    """The first audio stream as float32 `[samples, channels]` at `rate` Hz (`channels`: mix to
    that many; default: as stored, which costs a probe)."""
    if channels is None:
        channels = describe(path)["audio"]["channels"]
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path), "-map", "0:a:0",
               "-f", "f32le", "-ar", str(rate), "-ac", str(channels), "-"]
    out = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(out, "<f4").reshape(-1, channels)
