"""Faces stage: the main face of each video, per picked frame, as an aligned crop, box and score.

`python -m extract.faces --manifest M --work W [--num-frames T] [--jobs N] [--backend dask]`
(`make faces`, `dmver faces`) writes `W/faces/<key>.npz` per video. The frames are those the
frames stage picks (`extract.clip`: same `--num-frames`, same frame numbers, rotation applied),
decoded once more at a size fit for detection: the long side at most `--detect-size` pixels
(640: a 720x1280 phone clip is searched at 360x640), never upscaled. The detector is MTCNN with
its published weights (`extract.mtcnn`; `make weights NAMES=face` fetches them); the main face
is found and followed by `extract.facetrack` (a full search every `--every`-th frame, O-Net
tracking between).

Each output holds `jpeg` + `offsets` (the crops of the frames with a face, JPEG-encoded as the
frames stage stores frames, an empty entry for a frame without a face: 79 crops of 112 px took
0.39 MB instead of 3.0 MB raw in `make bench-faces`), `boxes` float32 [T, 4] (x0, y0, x1, y1
in the source's displayed pixels; NaN without a face), `scores` float32 [T] (MTCNN's face
probability, 0 without a face), `found` bool [T], `crop_size`, and `meta` (JSON: picks, the
searched frame size, how many frames got the full search, the source's size and provenance).

    track = load(work, video_id)   # FaceTrack(crops uint8 [T, S, S, 3] RGB, boxes, scores, found)

A video in which no frame shows a face is a success with `found` all False (the summary line
counts the "videos without a face"); a face smaller than the smallest face searched
(`--min-face` of the frame's short side) counts as no face. Without the detector's files the
command exits 2 at once, naming `make weights NAMES=face`: a random detector would find nothing,
so there is no `--weights random` here.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from extract import cli, clip, facetrack, media, mtcnn, stage
from extract.frames import decode_jpegs, encode_jpegs
from extract.layout import Work
from extract.manifest import Video
from extract.options import option, settings_from

NAME, SUFFIX = "faces", ".npz"
NO_FACE_NOTE = "videos without a face"
FETCH_HINT = "make weights NAMES=face"


@dataclasses.dataclass(frozen=True)
class FaceSettings:
    """What the face stage searches and stores; `num_frames` is the frames stage's option (same
    default, same picks), `weights` is where the detector's files are (not part of the claim:
    the files are pinned by their SHA-256)."""

    num_frames: int = option(clip.ClipSettings.num_frames, "frames picked per video (as the frames stage picks them)")
    detect_size: int = option(640, "long side of the frames searched for faces, pixels (never upscaled)")
    min_face: float = option(0.1, "smallest face searched, as a fraction of the searched frame's short side "
                                  f"(at least {mtcnn.MIN_FACE} px)")
    every: int = option(8, "full face search on every N-th picked frame and the last; O-Net follows the face between")
    crop_size: int = option(112, "side of the stored face crops, pixels")
    margin: float = option(0.2, "crop margin around the face box, as a fraction of its side on each side")
    jpeg_quality: int = option(90, "JPEG quality of the stored crops (0-100)")
    weights: str = option("weights", f"folder holding mtcnn/{{pnet,rnet,onet}}.pt ({FETCH_HINT})")
    timeout: float = stage.timeout_option()

    def __post_init__(self):
        if self.num_frames < 1 or self.every < 1:
            raise ValueError(f"num_frames and every must be >= 1, got {self.num_frames} and {self.every}")
        if self.detect_size < 48 or self.crop_size < 16:
            raise ValueError(f"detect_size must be >= 48 and crop_size >= 16, "
                             f"got {self.detect_size} and {self.crop_size}")
        if not 0 <= self.min_face < 1 or not 0 <= self.margin <= 1:
            raise ValueError(f"min_face must be in [0, 1) and margin in [0, 1], got {self.min_face} and {self.margin}")


class FaceTrack(NamedTuple):
    """One video's faces (T picked frames): what `load` returns."""
    crops: np.ndarray    # uint8 [T, S, S, 3] RGB, zeros where no face
    boxes: np.ndarray    # float32 [T, 4] x0, y0, x1, y1 in source pixels, NaN where no face
    scores: np.ndarray   # float32 [T], 0 where no face
    found: np.ndarray    # bool [T]


def search_size(width: int, height: int, detect_size: int) -> tuple[int, int]:
    """The searched frame's width and height: the displayed frame scaled so that its long side is
    at most `detect_size`, aspect kept, sides even (never upscaled)."""
    scale = min(1.0, detect_size / max(width, height))
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def _geometry(settings: FaceSettings) -> clip.Geometry:
    def geometry(info: media.MediaInfo):
        w, h = search_size(info.width, info.height, settings.detect_size)
        return [("scale", (w, h), {"flags": "bilinear"})], w, h
    return geometry


@functools.lru_cache(maxsize=2)
def _nets(folder: str):
    """The detector, loaded once per worker process."""
    return mtcnn.load_mtcnn(folder)


def check_weights(folder: str) -> None:
    """Refuse at once (exit 2, one line) when the detector's files are absent or do not load."""
    if folder == "random":
        raise cli.UserError(f"the face stage has no random weights (a random detector finds no face): "
                            f"run `{FETCH_HINT}` and use --weights weights")
    try:
        mtcnn.load_mtcnn(folder)
    except mtcnn.FaceWeightsError as exc:
        raise cli.UserError(f"no usable face detector in {Path(folder) / mtcnn.SUBFOLDER} "
                            f"(run `{FETCH_HINT}`): {str(exc).splitlines()[0]}") from None


def process(video: Video, out: Path, settings: FaceSettings) -> str | None:
    nets = _nets(settings.weights)
    decoded = clip.decode_clip(video, settings, geometry=_geometry(settings))
    picks = decoded.picks
    frames = [decoded.frames[i] for i in picks.tolist()]   # a list: no copy of T full frames
    height, width = frames[0].shape[:2]
    min_face = max(float(mtcnn.MIN_FACE), settings.min_face * min(width, height))
    followed = facetrack.follow(nets, frames, every=settings.every, min_face=min_face)
    crops = facetrack.crop(frames, followed, settings.crop_size, settings.margin)
    sx, sy = decoded.info.width / width, decoded.info.height / height
    boxes = (followed.boxes * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)
    found = followed.found.astype(bool)
    data, offsets = _encode(crops, found, settings.jpeg_quality)
    meta = json.dumps({"picks": picks.tolist(), "looped": bool(len(set(picks.tolist())) < len(picks)),
                       "searched_size": [width, height], "full_searches": followed.searched,
                       "source": decoded.source_meta(), "provenance": stage.current_source()})
    stage.write_output(out, lambda f: np.savez(f, jpeg=data, offsets=offsets, boxes=boxes,
                                               scores=followed.scores.astype(np.float32), found=found,
                                               crop_size=np.int64(settings.crop_size), meta=np.array(meta)))
    return None if found.any() else NO_FACE_NOTE


def _encode(crops: np.ndarray, found: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """JPEG bytes of the found crops; a frame without a face has an empty entry."""
    offsets = np.zeros(len(crops) + 1, np.int64)
    data = np.zeros(0, np.uint8)
    if found.any():
        data, found_offsets = encode_jpegs(crops[found], quality)
        sizes = np.zeros(len(crops), np.int64)
        sizes[found] = np.diff(found_offsets)
        offsets[1:] = np.cumsum(sizes)
    return data, offsets


STAGE = stage.Stage(NAME, SUFFIX, process, settings_type=FaceSettings)


def load(work, video_id: str) -> FaceTrack:
    """One video's stored faces (see `FaceTrack`)."""
    path = Work(work).output(NAME, video_id, SUFFIX)
    if not path.is_file():
        raise FileNotFoundError(f"no faces for {video_id!r} in {Path(work) / NAME} (run the faces stage first)")
    with np.load(path) as z:
        found, offsets, size = z["found"].astype(bool), z["offsets"], int(z["crop_size"])
        crops = np.zeros((len(found), size, size, 3), np.uint8)
        if found.any():
            keep = np.flatnonzero(found)
            starts = offsets[:-1][keep]
            crops[keep] = decode_jpegs(z["jpeg"], np.append(starts, offsets[keep[-1] + 1]))
        return FaceTrack(crops, z["boxes"].astype(np.float32), z["scores"].astype(np.float32), found)


def meta(work, video_id: str) -> dict:
    """The stored meta of one video's faces: `picks`, `looped`, `searched_size` (width, height),
    `full_searches`, `source` (displayed size, fps, rotation, frame counts) and `provenance`."""
    with np.load(Work(work).output(NAME, video_id, SUFFIX)) as z:
        return json.loads(str(z["meta"]))


def _main(args) -> int:
    settings = settings_from(args, FaceSettings)
    check_weights(settings.weights)
    args.weights = str(Path(settings.weights).resolve())   # workers (and Dask ones) get an absolute path
    return stage.run_command(STAGE, args)


def main(argv=None) -> int:
    args = stage.stage_parser(STAGE, "Find the main face in the picked frames of every video: crops, boxes, "
                                     "scores.").parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose, level=stage.LOG_LEVEL)


if __name__ == "__main__":
    # Run through the importable module so worker processes can unpickle the stage by name.
    from extract.faces import main as _main_

    sys.exit(_main_())
