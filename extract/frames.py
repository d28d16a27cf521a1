"""Frames stage: T RGB frames per video, stored as JPEG in one file per video.

`python -m extract.frames --manifest M --work W [--num-frames T] [--size S] [--resize crop|squash]`
writes `W/frames/<key>.npz` holding `jpeg` (all frames' JPEG bytes, concatenated), `offsets`
(T+1 byte offsets) and `meta` (JSON: picked frame numbers; the source's displayed size, rate,
rotation, declared and decoded frame counts; its provenance, see `meta`). JPEG at the
default quality keeps a clip of the default 79 frames of 224x224 near 1 MB instead of 12 MB raw.
`load(work, video_id)` gives back uint8 `[T, S, S, 3]` RGB.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from extract import cli, clip, stage
from extract.layout import Work
from extract.manifest import Video
from extract.options import option

NAME, SUFFIX = "frames", ".npz"


@dataclasses.dataclass(frozen=True)
class FrameSettings(clip.ClipSettings):
    jpeg_quality: int = option(90, "JPEG quality of the stored frames (0-100)")


def encode_jpegs(frames: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames -> (concatenated JPEG bytes, offsets)."""
    blobs = []
    for frame in frames:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        blobs.append(buf.ravel())
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.concatenate(blobs), offsets


def decode_jpegs(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    frames = [cv2.cvtColor(cv2.imdecode(data[a:b], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for a, b in zip(offsets[:-1], offsets[1:])]
    return np.stack(frames)


def process(video: Video, out: Path, settings: FrameSettings) -> str | None:
    decoded = clip.decode_clip(video, settings)
    picks = decoded.picks
    clip_frames = np.stack([decoded.frames[i] for i in picks.tolist()])
    data, offsets = encode_jpegs(clip_frames, settings.jpeg_quality)
    looped = bool(len(set(picks.tolist())) < len(picks))
    meta = json.dumps({"picks": picks.tolist(), "looped": looped, "source": decoded.source_meta(),
                       "provenance": stage.current_source()})
    stage.write_output(out, lambda f: np.savez(f, jpeg=data, offsets=offsets, meta=np.array(meta)))
    return "looped (fewer source frames than --num-frames)" if looped else None


def meta(work, video_id: str) -> dict:
    """The stored meta of one video's frames: `picks` (source frame numbers), `looped`, `source`
    (displayed width and height, fps, rotation, declared and decoded frame counts) and
    `provenance` (the source file's resolved path, size, mtime_ns, clip start and end)."""
    with np.load(Work(work).output(NAME, video_id, SUFFIX)) as z:
        return json.loads(str(z["meta"]))


STAGE = stage.Stage(NAME, SUFFIX, process, settings_type=FrameSettings)


def load(work, video_id: str) -> np.ndarray:
    """The stored frames of one video: uint8 `[T, S, S, 3]` RGB."""
    path = Work(work).output(NAME, video_id, SUFFIX)
    if not path.is_file():
        raise FileNotFoundError(f"no frames for {video_id!r} in {Path(work) / NAME} (run the frames stage first)")
    with np.load(path) as z:
        return decode_jpegs(z["jpeg"], z["offsets"])


def main(argv=None) -> int:
    args = stage.stage_parser(STAGE, "Pick T frames per video, resize, store as JPEG.").parse_args(argv)
    return cli.run(lambda: stage.run_command(STAGE, args), verbose=args.verbose, level=stage.LOG_LEVEL)


if __name__ == "__main__":
    # Run through the importable module so worker processes can unpickle the stage by name.
    from extract.frames import main as _main

    sys.exit(_main())
