"""Staged work folders for the feature-stage tests: the three extraction stages run on a few
generated videos, and copies of such a folder for tests that change it.

tests/conftest.py builds one of them per session (`staged_session`) and hands each test that asks
for `staged` a private copy of it."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple, Sequence

from extract import audio, flow, frames, manifest, sample, stage
from extract.manifest import Video
from tests import videos as tv

STAGED_FRAMES, STAGED_SIZE = 8, 32   # the geometry of the staged folder: tiny, so the stages take seconds
STAGES = ("frames", "flow", "audio")


class Staged(NamedTuple):
    """A manifest, the work folder its videos were staged into, and its rows (unpacks as m, w, rows)."""
    manifest: Path
    work: Path
    rows: list[Video]


def run_all_stages(rows: Sequence[Video], work: Path, num_frames: int, size: int) -> Path:
    """frames, flow and audio on `rows` into `work`, one job each (tiny geometry keeps it fast)."""
    stage.run_stage(frames.STAGE, rows, work, frames.FrameSettings(num_frames=num_frames, size=size), jobs=1)
    stage.run_stage(flow.STAGE, rows, work, flow.FlowSettings(num_frames=num_frames, size=size), jobs=1)
    stage.run_stage(audio.STAGE, rows, work, audio.AudioSettings(), jobs=1)
    return work


def build_staged(root: Path, videos: int = 4) -> Staged:
    """`videos` generated clips v0, v1, ... (classes a and b alternating, all in train, all with
    audio) under `root`, their manifest, and `root/work` with every stage run at STAGED_FRAMES
    frames of STAGED_SIZE px."""
    rows = [Video(id=f"v{i}", path=str(tv.make_video(root / f"v{i}.mp4", seed=i)), label="ab"[i % 2],
                  split="train") for i in range(videos)]
    m = manifest.write_manifest(root / "manifest.csv", rows)
    return Staged(m, run_all_stages(rows, root / "work", STAGED_FRAMES, STAGED_SIZE), rows)


def sample_with_frames_and_audio(root: Path, videos: int = 30) -> Staged:
    """The sample dataset (`extract.sample`: `videos` clips over its three classes, its own split)
    in `root/data`, with the frames and audio stages run into `root/work` at STAGED_FRAMES frames
    of STAGED_SIZE px: the start of the tests that train, export and predict."""
    data = root / "data"
    sample.main(["--out", str(data), "--videos", str(videos)])
    m = data / "manifest.csv"
    rows = manifest.read_manifest(m)
    work = root / "work"
    stage.run_stage(frames.STAGE, rows, work, frames.FrameSettings(num_frames=STAGED_FRAMES, size=STAGED_SIZE), jobs=2)
    stage.run_stage(audio.STAGE, rows, work, audio.AudioSettings(), jobs=2)
    return Staged(m, work, rows)


def copy_stages(src: Path, dst: Path) -> Path:
    """A second work folder holding the same stage outputs. Modification times are kept, so the
    provenance records stay valid and nothing is redone; the videos themselves are not copied."""
    for name in STAGES:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name, copy_function=shutil.copy2)
    return dst


def copy_staged(staged: Staged, dst: Path) -> Staged:
    """`staged` with its work folder copied to `dst` (same manifest and videos)."""
    return staged._replace(work=copy_stages(staged.work, dst), rows=list(staged.rows))
