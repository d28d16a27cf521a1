"""Which frames of a video the stages use, and at what geometry.

The frames and flow stages share this so that flow field k always belongs to frame k:
T frame numbers picked uniformly over the clip (`start`..`end` when the manifest gives them),
looping when the clip has fewer than T frames; geometry as in I3D's Kinetics protocol (short
side S*256/224, centre crop S) or the published squash to S x S.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from extract import media, stage
from extract.manifest import Video
from extract.options import option

# Decoded and declared lengths may differ by this many frames without a warning (rounding of
# duration x rate, an edit list's trailing frame).
FRAME_TOLERANCE = 2


RESIZES = ("crop", "squash")


@dataclasses.dataclass(frozen=True)
class ClipSettings:
    """The frames a stage picks and their geometry: the published frame count and size by
    default, with I3D's crop instead of the published squash."""

    num_frames: int = option(79, "frames picked per video (the published number is the default)")
    size: int = option(224, "side of the square frames, in pixels")
    resize: str = option("crop", "crop: short side size*256/224, then a centre crop (I3D protocol); "
                                 "squash: the whole frame squashed to size x size (published)", choices=RESIZES)
    timeout: float = stage.timeout_option()

    def __post_init__(self):
        if self.num_frames < 1 or self.size < 16:
            raise ValueError(f"num_frames must be >= 1 and size >= 16, got {self.num_frames} and {self.size}")
        if self.resize not in RESIZES:
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


def geometry_filters(width: int, height: int, settings: ClipSettings) -> list[media.FilterSpec]:
    """The FFmpeg filters that turn a displayed width x height frame into size x size, as
    (name, args, kwargs) for ffmpeg-python."""
    s = settings.size
    if settings.resize == "squash":
        return [("scale", (s, s), {"flags": "bilinear"})]
    short = round(s * 256 / 224)
    if width <= height:
        sw, sh = short, max(short, round(height * short / width))
    else:
        sw, sh = max(short, round(width * short / height)), short
    return [("scale", (sw, sh), {"flags": "bilinear"}), ("crop", (s, s, (sw - s) // 2, (sh - s) // 2), {})]


def geometry_filter(width: int, height: int, settings: ClipSettings) -> str:
    """`geometry_filters` as FFmpeg's filter-chain text, e.g. `scale=256:455:flags=bilinear,crop=224:224:16:115`."""
    return ",".join(name + "=" + ":".join([*map(str, args), *(f"{k}={v}" for k, v in kwargs.items())])
                    for name, args, kwargs in geometry_filters(width, height, settings))


def estimated_frame_count(info: media.MediaInfo, video: Video) -> int | None:
    """Frames in the clip as duration x frame rate; None when the file does not say."""
    if not info.fps:
        return None
    end = video.end if video.end is not None else (info.video_duration or info.duration)
    if end is None:
        return None
    span = end - (video.start or 0.0)
    return max(1, int(math.floor(span * info.fps + 0.5)))


def declared_frame_count(info: media.MediaInfo, video: Video) -> int | None:
    """The clip's length as the container states it: the stream's frame count for a whole video
    when the container stores one (MP4 does), else duration x frame rate; None when it says nothing."""
    if video.start is None and video.end is None and info.frames > 0:
        return info.frames
    return estimated_frame_count(info, video)


def probe_video(video: Video, timeout: float = media.DEFAULT_TIMEOUT) -> media.MediaInfo:
    info = media.probe(video.path, timeout=timeout)
    if not info.has_video:
        kind = "audio-only file" if info.has_audio else "no video stream"
        raise media.MediaError(f"{kind}: {video.path}")
    if info.width < 2 or info.height < 2:
        raise media.MediaError(f"video is {info.width}x{info.height}: {video.path}")
    return info


# How a stage wants its frames: displayed size -> (FFmpeg filters, output width, output height).
Geometry = Callable[[media.MediaInfo], tuple[list[media.FilterSpec], int, int]]


def square_geometry(settings: ClipSettings) -> Geometry:
    """The frames and flow stages' geometry: `settings.size` squares (`geometry_filters`)."""
    return lambda info: (geometry_filters(info.width, info.height, settings), settings.size, settings.size)


def decode(video: Video, info: media.MediaInfo, settings, wanted: Sequence[int] | None,
           gray: bool = False, count_from: int | None = None, geometry: Geometry | None = None):
    """One decoding pass over the clip, keeping the frame numbers in `wanted` (all when None);
    with `count_from`, a `media.DecodedFrames` that also counts the frames from that number on.
    `geometry` defaults to the square frames of `settings` (a `ClipSettings`)."""
    filters, width, height = (geometry or square_geometry(settings))(info)
    return media.decode_frames(video.path, filters, width, height, indices=wanted, gray=gray, start=video.start,
                               end=video.end, timeout=settings.timeout, count_from=count_from)


@dataclasses.dataclass
class DecodedClip:
    picks: np.ndarray
    frames: dict            # frame number -> image
    partners: np.ndarray | None
    info: media.MediaInfo
    declared: int | None    # frames the container declares for the clip
    decoded: int            # frames that really decode

    def source_meta(self) -> dict:
        """What a stage output records of its source: displayed size, rate, rotation, lengths."""
        return {"width": self.info.width, "height": self.info.height, "fps": self.info.fps,
                "rotation": self.info.rotation, "declared_frames": self.declared,
                "decoded_frames": self.decoded}


def length_warning(declared: int | None, decoded: int) -> str | None:
    """The warning for a clip whose decoded length disagrees with the declared one, or None."""
    if declared is None or abs(decoded - declared) <= FRAME_TOLERANCE:
        return None
    kind = "truncated or damaged" if decoded < declared else "container understates the length"
    return (f"{kind}: the container declares {declared} frames, {decoded} decode; "
            f"the clip was taken over the {decoded} decoded frames")


def _wanted(picks: np.ndarray, partners: np.ndarray | None) -> list[int]:
    return sorted(set(picks.tolist()) | (set(partners.tolist()) - {-1} if partners is not None else set()))


def _plan(n: int, settings: ClipSettings, with_partners: bool) -> tuple[np.ndarray, np.ndarray | None, list[int]]:
    picks = pick_indices(n, settings.num_frames)
    partners = flow_partners(picks, n) if with_partners else None
    return picks, partners, _wanted(picks, partners)


def decode_clip(video: Video, settings, with_partners: bool = False, gray: bool = False,
                geometry: Geometry | None = None) -> DecodedClip:
    """Decode what the picked frames (and, for flow, their partners) need, in one pass.

    `settings` gives `num_frames` and `timeout` (a `ClipSettings`, or another stage's settings
    with those fields and its own `geometry`: the face stage decodes larger frames at the same
    picks).

    The picks are planned on the container's frame count (`declared_frame_count`), so FFmpeg
    can drop the unwanted frames before scaling; the same pass also counts the frames from just
    before the declared end on, which gives the real length. When the stream really has another
    length (a truncated file, a container whose duration is too short or too long, variable
    frame rate), the picks are made again on the frames that really decode, and if the two
    lengths differ by more than `FRAME_TOLERANCE` frames the video gets a warning (`stage.warn`:
    a row of the stage's warnings.csv) with both lengths.
    """
    info = probe_video(video, settings.timeout)
    declared = declared_frame_count(info, video)
    if declared is not None:
        picks, partners, wanted = _plan(declared, settings, with_partners)
        count_from = max(wanted[-1] + 1, declared - FRAME_TOLERANCE - 1)
        got = decode(video, info, settings, wanted, gray, count_from=count_from, geometry=geometry)
        exact = got.beyond > 0 or count_from == wanted[-1] + 1
        if len(got.frames) == len(wanted) and exact:
            decoded = count_from + got.beyond
            if abs(decoded - declared) <= FRAME_TOLERANCE:
                return DecodedClip(picks, dict(zip(wanted, got.frames)), partners, info, declared, decoded)
            if decoded > declared:  # longer than declared: its real length is known, pick again over it
                picks, partners, wanted = _plan(decoded, settings, with_partners)
                frames = decode(video, info, settings, wanted, gray, geometry=geometry)
                if len(frames) == len(wanted):
                    stage.warn(length_warning(declared, decoded))
                    return DecodedClip(picks, dict(zip(wanted, frames)), partners, info, declared, decoded)
    every = decode(video, info, settings, None, gray, geometry=geometry)
    warning = length_warning(declared, len(every))
    if warning:
        stage.warn(warning)
    picks, partners, _ = _plan(len(every), settings, with_partners)
    return DecodedClip(picks, dict(enumerate(every)), partners, info, declared, len(every))


def decode_picked(video: Video, settings: ClipSettings, with_partners: bool = False,
                  gray: bool = False) -> tuple[np.ndarray, dict[int, np.ndarray], np.ndarray | None]:
    """`decode_clip` as (picks, frames by number, partners or None)."""
    c = decode_clip(video, settings, with_partners, gray)
    return c.picks, c.frames, c.partners
