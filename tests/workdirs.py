"""A work folder with every extraction stage run, for the feature-stage tests."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from extract import audio, flow, frames, stage
from extract.manifest import Video


def run_all_stages(rows: Sequence[Video], work: Path, num_frames: int, size: int) -> Path:
    """frames, flow and audio on `rows` into `work`, one job each (tiny geometry keeps it fast)."""
    stage.run_stage(frames.STAGE, rows, work, frames.FrameSettings(num_frames=num_frames, size=size), jobs=1)
    stage.run_stage(flow.STAGE, rows, work, flow.FlowSettings(num_frames=num_frames, size=size), jobs=1)
    stage.run_stage(audio.STAGE, rows, work, audio.AudioSettings(), jobs=1)
    return work
