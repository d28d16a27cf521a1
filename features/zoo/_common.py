"""Small helpers the zoo's entries share (not an entry module: its name starts with '_')."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

# A typical DMVER micro-video (about 15 s) gives the frames stage's 79 frames and 15 audio
# windows of 0.96 s; example inputs scale the audio rows with the frames asked for.
TYPICAL_FRAMES, TYPICAL_AUDIO_WINDOWS = 79, 15


def tensor_of(ndim: int, check: Callable[[torch.Tensor], bool]) -> Callable[[Any], bool]:
    """`Network.accepts` for a tensor of `ndim` dimensions passing `check`."""
    return lambda x: isinstance(x, torch.Tensor) and x.dim() == ndim and check(x)


def parameter_summary(name: str) -> Callable[[nn.Module], str]:
    """`WeightFile.summary`: the network's name and size in parameters."""
    return lambda m: f"{name}, {sum(p.numel() for p in m.parameters()) / 1e6:.1f} M parameters"


def audio_windows(frames: int) -> int:
    """Audio windows of 0.96 s that go with a clip of `frames` frames (15 for 79), at least one."""
    return max(1, round(frames * TYPICAL_AUDIO_WINDOWS / TYPICAL_FRAMES))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
