"""ResNet-18 on each frame: the `rgb2d` modality (the seed's ConvNet+LSTM row).

torchvision's ImageNet ResNet-18 without its classifier (`features.resnet`): one 512-d row per
frame, for the LSTM head.
"""
from __future__ import annotations

import torch

from extract import frames as frames_stage
from features import inputs
from features.modalities import Modality, Network, StageSource, WeightFile
from features.resnet import FEATURE_DIM, ResNet18Features
from features.zoo._common import generator, tensor_of

# ----------------------------------------------------------------------------- weights file

RESNET_FILE = WeightFile("resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                         "ResNet-18 (ImageNet, torchvision)", ResNet18Features.load_checkpoint,
                         lambda m: "ResNet-18, 512-d features", ("rgb2d", "resnet18"), sha256_prefix="f37072fd")

# ----------------------------------------------------------------------------- network

NETWORK = Network("ResNet18Features", FEATURE_DIM, "rows", lambda model, x: model(x), "[T, 3, H, W]",
                  tensor_of(4, lambda x: x.shape[1] == 3), build=ResNet18Features, file=RESNET_FILE)

# ----------------------------------------------------------------------------- prepare
# inputs.imagenet_frames: uint8 [T, H, W, 3] -> [T, 3, H, W], ImageNet mean/std.

# ----------------------------------------------------------------------------- example input


def example(videos: int, frames: int, size: int, seed: int) -> list:
    """Normalised frames [frames, 3, size, size] (standard normal: ImageNet-normalised scale)."""
    gen = generator(seed)
    return [torch.randn(frames, 3, size, size, generator=gen) for _ in range(videos)]

# ----------------------------------------------------------------------------- entry


rgb2d = Modality(
    name="rgb2d", summary="ResNet-18 on each frame", source=StageSource(frames_stage),
    prepare=inputs.imagenet_frames, network=NETWORK, cached="`[T, 512]`, one row per frame",
    batch={"cpu": 32, "cuda": 256}, videos_per_call={"cpu": 1, "cuda": 4},
    example=example, label="ResNet-18", column="RGB")

MODALITIES = (rgb2d,)
