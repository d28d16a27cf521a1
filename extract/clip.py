"""Which frames of a video the stages use, and at what geometry.

The frames and flow stages share this so that flow field k always belongs to frame k:
T frame numbers picked uniformly over the clip (`start`..`end` when the manifest gives them),
looping when the clip has fewer than T frames; geometry as in I3D's Kinetics protocol (short
side S*256/224, centre crop S) or the published squash to S x S.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from extract import media
from extract.manifest import Video


@dataclasses.dataclass(frozen=True)
class ClipSettings:
    num_frames: int = 79
    size: int = 224
    resize: str = "crop"  # "crop" (short side size*256/224, centre crop) or "squash" (published)
    timeout: float = media.DEFAULT_TIMEOUT

    def __post_init__(self):
        if self.num_frames < 1 or self.size < 16:
            raise ValueError(f"num_frames must be >= 1 and size >= 16, got {self.num_frames} and {self.size}")
        if self.resize not in ("crop", "squash"):
            raise ValueError(f"resize must be 'crop' or 'squash', got {self.resize!r}")


def pick_indices(n_frames: int, num_frames: int) -> np.ndarray:
    """T frame numbers spread evenly over n frames (first frame included); shorter clips loop."""
    if n_frames < 1:
        raise ValueError("a clip needs at least one frame")
    k = np.arange(num_frames, dtype=np.int64)
    return k * n_frames // num_frames if n_frames >= num_frames else k % n_frames


def flow_partners(picks: np.ndarray, n_frames: int) -> np.ndarray:
    """The frame each pick's flow is computed to: the next source frame.

    A pick on the clip's last frame has no successor, so its flow is that of the step into it
    (partner = pick - 1, and the pair is swapped by the caller); a one-frame clip gets -1 (zero flow).
    """
    partners = picks + 1
    last = partners >= n_frames
    partners[last] = picks[last] - 1
    return partners


def geometry_filter(width: int, height: int, settings: ClipSettings) -> str:
    """The FFmpeg filter that turns a displayed width x height frame into size x size."""
    s = settings.size
    if settings.resize == "squash":
        return f"scale={s}:{s}:flags=bilinear"
    short = round(s * 256 / 224)
    if width <= height:
        sw, sh = short, max(short, round(height * short / width))
    else:
        sw, sh = max(short, round(width * short / height)), short
    return f"scale={sw}:{sh}:flags=bilinear,crop={s}:{s}:{(sw - s) // 2}:{(sh - s) // 2}"


def estimated_frame_count(info: media.MediaInfo, video: Video) -> int | None:
    """Frames in the clip as duration x frame rate; None when the file does not say."""
    if not info.fps:
        return None
    end = video.end if video.end is not None else info.duration
    if end is None:
        return None
    span = end - (video.start or 0.0)
    return max(1, int(math.floor(span * info.fps + 0.5)))


def probe_video(video: Video, timeout: float = media.DEFAULT_TIMEOUT) -> media.MediaInfo:
    info = media.probe(video.path, timeout=timeout)
    if not info.has_video:
        kind = "audio-only file" if info.has_audio else "no video stream"
        raise media.MediaError(f"{kind}: {video.path}")
    if info.width < 2 or info.height < 2:
        raise media.MediaError(f"video is {info.width}x{info.height}: {video.path}")
    return info


def decode(video: Video, info: media.MediaInfo, settings: ClipSettings, wanted: Sequence[int] | None,
           gray: bool = False) -> list[np.ndarray]:
    """One decoding pass over the clip, keeping the frame numbers in `wanted` (all when None)."""
    return media.decode_frames(video.path, geometry_filter(info.width, info.height, settings), settings.size,
                               settings.size, indices=wanted, gray=gray, start=video.start, end=video.end,
                               timeout=settings.timeout)


def decode_picked(video: Video, settings: ClipSettings, with_partners: bool = False,
                  gray: bool = False) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray | None]:
    """Decode what the picked frames (and, for flow, their partners) need, in one pass.

    The frame count comes from the container's duration x frame rate, so FFmpeg can drop the
    unwanted frames before scaling. If the stream ends before the last wanted frame (variable
    frame rate, a container duration longer than the video, a truncated file), the clip is
    decoded once more in full and the picks are made on the frames that really exist.
    Returns (picks, frames by number, partners or None).
    """
    info = probe_video(video, settings.timeout)
    n_est = estimated_frame_count(info, video)
    if n_est is not None:
        picks = pick_indices(n_est, settings.num_frames)
        partners = flow_partners(picks, n_est) if with_partners else None
        wanted = sorted(set(picks.tolist()) | (set(partners.tolist()) - {-1} if partners is not None else set()))
        frames = decode(video, info, settings, wanted, gray)
        if len(frames) == len(wanted):
            return picks, dict(zip(wanted, frames)), partners
    every = decode(video, info, settings, None, gray)
    picks = pick_indices(len(every), settings.num_frames)
    partners = flow_partners(picks, len(every)) if with_partners else None
    return picks, dict(enumerate(every)), partners
