"""Real face media for the face-modality tests (the weights: the session fixture `face_weights`).

`smiling_video(path)` writes scikit-image's astronaut photograph (a smiling face) moved and zoomed
over time as an H.264 video; `faces_work(...)` runs the real faces stage on videos."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from extract import faces, stage
from extract.manifest import Video
from tests import videos as tv

def smiling_frames(frames: int = 24, width: int = 180, height: int = 320) -> np.ndarray:
    """The astronaut photo in a portrait frame, its face growing from 60 to 110 px wide and moving."""
    import cv2
    import skimage.data

    photo = skimage.data.astronaut()
    out = []
    for t in range(frames):
        phase = t / max(1, frames - 1)
        scale = (60 + 50 * phase) / 86                       # the face box is 86 px wide in the photo
        affine = np.array([[scale, 0, width / 2 + 20 * np.sin(2 * np.pi * phase) - scale * 224],
                           [0, scale, height / 2 - scale * 117]])
        out.append(cv2.warpAffine(photo, affine, (width, height), borderMode=cv2.BORDER_REPLICATE))
    return np.stack(out)


def smiling_video(path, frames: int = 24, fps: int = 12) -> Path:
    """`smiling_frames` as an H.264 video with a sine tone (so the audio stage has work too)."""
    clip = smiling_frames(frames)
    height, width = clip.shape[1:3]
    tv._ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
                *tv._sine(frames / fps), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-b:a", "64k", str(path)], stdin=clip.tobytes())
    return Path(path)


def run_faces(videos: Sequence[Video], work: Path, weights: Path, num_frames: int = 8) -> stage.Summary:
    """The real faces stage on `videos` into `work`."""
    settings = faces.FaceSettings(num_frames=num_frames, weights=str(weights))
    return stage.run_stage(faces.STAGE, videos, work, settings, jobs=1)
