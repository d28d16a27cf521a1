"""Videos of a real face for the face stage's tests and benchmark: a public-domain photo moved,
zoomed and turned over time, encoded like a phone clip (H.264, AAC).

Drawn shapes are not faces to a detector, so the frames come from real photographs shipped
inside installed packages: scikit-image's `astronaut` (Eileen Collins, NASA, public domain) and
matplotlib's `grace_hopper.jpg` (US Navy, public domain). `face_frame` places the photo so that
its face is `width` pixels wide, centred at (cx, cy) of an output frame, turned by `angle`
degrees; pixels outside the photo repeat its edge (a plain background, as behind a speaker).

    path = write_video("clip.mp4", width=720, height=1280, seconds=15, fps=30)   # DMVER-like
    frames, boxes = clip_frames(24, 224, 224)                                       # in memory, with the true boxes
"""
from __future__ import annotations

import math
import os
import subprocess
import tempfile
import wave
from pathlib import Path

import cv2
import numpy as np

# The face in each photo, x0, y0, x1, y1 in the photo's pixels (MTCNN's box on the photo itself,
# as extract.mtcnn.detect gives it with the published weights, rounded).
PHOTOS = {
    "astronaut": (181.0, 62.0, 268.0, 172.0),
    "hopper": (174.0, 120.0, 356.0, 340.0),
}


def photo(name: str) -> np.ndarray:
    """The photograph, uint8 RGB."""
    if name == "astronaut":
        import skimage.data

        return skimage.data.astronaut()
    if name == "hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            data = np.frombuffer(f.read(), np.uint8)
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    raise ValueError(f"unknown photo {name!r}; one of {', '.join(PHOTOS)}")


def face_frame(image: np.ndarray, face: tuple, out_w: int, out_h: int, cx: float, cy: float, width: float,
               angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(frame uint8 [out_h, out_w, 3], the face's box in it [4]) with the face `width` px wide at (cx, cy)."""
    fx, fy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    scale = width / (face[2] - face[0])
    affine = cv2.getRotationMatrix2D((fx, fy), angle, scale)
    affine[:, 2] += [cx - fx, cy - fy]
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    frame = cv2.warpAffine(image, affine, (out_w, out_h), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    half_w, half_h = width / 2, (face[3] - face[1]) * scale / 2
    return frame, np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], np.float32)


def motion(t: float, out_w: int, out_h: int, face_range: tuple[float, float]) -> tuple[float, float, float, float]:
    """(cx, cy, face width, angle) at phase t in [0, 1]: a slow drift, a zoom in and out, a small turn."""
    lo, hi = face_range
    width = lo + (hi - lo) * (0.5 - 0.5 * math.cos(2 * math.pi * t))
    cx = out_w / 2 + 0.15 * out_w * math.sin(2 * math.pi * t)
    cy = out_h * 0.42 + 0.08 * out_h * math.sin(4 * math.pi * t)
    return cx, cy, width, 10 * math.sin(6 * math.pi * t)


def clip_frames(n: int, out_w: int, out_h: int, face_range: tuple[float, float] | None = None,
                name: str = "astronaut") -> tuple[np.ndarray, np.ndarray]:
    """n frames of the moving face (uint8 [n, out_h, out_w, 3]) and its true boxes [n, 4]."""
    image, face = photo(name), PHOTOS[name]
    face_range = face_range or (0.3 * min(out_w, out_h), 0.55 * min(out_w, out_h))
    frames, boxes = [], []
    for k in range(n):
        f, b = face_frame(image, face, out_w, out_h, *motion(k / max(1, n - 1), out_w, out_h, face_range))
        frames.append(f)
        boxes.append(b)
    return np.stack(frames), np.stack(boxes)


def speech_like(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-paced signal (harmonics of a gliding pitch, with pauses) as float32 mono."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.4 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None) ** 0.5 * (np.sin(2 * np.pi * 0.23 * t) > -0.6)
    return (0.25 * voiced * envelope + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_frames(path: str | os.PathLike, frames, width: int, height: int, fps: float = 30.0,
                 audio_seconds: float | None = None, rotate: int | None = None) -> Path:
    """Encode an iterable of displayed uint8 RGB frames [height, width, 3] as H.264 (with AAC
    speech-like audio of `audio_seconds`). `rotate` (90, 180, 270: clockwise, like a phone's tag)
    stores the frames turned the other way with display-matrix metadata, so a player (and
    FFmpeg's decoder) shows them as given."""
    from extract.media import ffmpeg_exe

    path = Path(path)
    quarter = (int(rotate) // 90) % 4 if rotate else 0
    sw, sh = (height, width) if quarter % 2 else (width, height)
    base = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    with tempfile.TemporaryDirectory(prefix="facevideo-") as tmp:
        target = Path(tmp) / ("norot" + path.suffix) if quarter else path
        cmd = [*base, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{sw}x{sh}", "-r", str(fps), "-i", "pipe:0"]
        if audio_seconds:
            wav = Path(tmp) / "voice.wav"
            with wave.open(str(wav), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(16000)
                w.writeframes((speech_like(audio_seconds) * 32767).astype("<i2").tobytes())
            cmd += ["-i", str(wav), "-c:a", "aac", "-b:a", "96k", "-shortest"]
        cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", str(target)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for frame in frames:
                proc.stdin.write(np.ascontiguousarray(np.rot90(frame, k=quarter)).tobytes())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg could not write {path}: {err[-500:]}")
        if quarter:
            done = subprocess.run([*base, "-display_rotation:v:0", str(-int(rotate)), "-i", str(target), "-map", "0",
                                   "-c", "copy", str(path)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"ffmpeg could not tag {path}: {done.stderr[-500:]}")
    return path


def write_video(path: str | os.PathLike, width: int = 720, height: int = 1280, seconds: float = 15.0,
                fps: float = 30.0, face_range: tuple[float, float] | None = None, name: str = "astronaut",
                face_until: float | None = None, audio: bool = True, rotate: int | None = None) -> Path:
    """An H.264/AAC MP4 of the moving face; with `face_until` (seconds) the picture cuts to a
    face-free background (the photo's corner) from then on."""
    n = int(round(seconds * fps))
    image, face = photo(name), PHOTOS[name]
    face_range = face_range or (0.3 * min(width, height), 0.55 * min(width, height))
    empty = cv2.resize(image[:40, :40], (width, height), interpolation=cv2.INTER_LINEAR)

    def frames():
        for k in range(n):
            if face_until is not None and k / fps >= face_until:
                yield empty
            else:
                yield face_frame(image, face, width, height, *motion(k / max(1, n - 1), width, height, face_range))[0]

    return write_frames(path, frames(), width, height, fps, seconds if audio else None, rotate)
