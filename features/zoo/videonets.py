"""Kinetics-400 clip models from torchvision: `r2plus1d` (R(2+1)D-18) and `s3d` (S3D).

Not part of `make features` (they cost seconds per video on a CPU): extracted by name. The
architectures are torchvision's; `features.videonets` says which activation is the feature and
loads the published files strictly. One row per non-overlapping 16-frame clip.
"""
from __future__ import annotations

import torch

from extract import frames as frames_stage
from features import inputs, videonets
from features.modalities import Modality, Network, StageSource, WeightFile
from features.zoo._common import generator, parameter_summary, tensor_of

# ----------------------------------------------------------------------------- weights files

_URL = "https://download.pytorch.org/models/"
R2PLUS1D_FILE = WeightFile("r2plus1d_18-91a641e6.pth", _URL + "r2plus1d_18-91a641e6.pth",
                           "R(2+1)D-18 (Kinetics-400, torchvision)", videonets.load_r2plus1d,
                           parameter_summary("R(2+1)D-18"), ("r2plus1d",), sha256_prefix="91a641e6")
S3D_FILE = WeightFile("s3d-d76dad2f.pth", _URL + "s3d-d76dad2f.pth", "S3D (Kinetics-400, torchvision)",
                      videonets.load_s3d, parameter_summary("S3D"), ("s3d",), sha256_prefix="d76dad2f")

# ----------------------------------------------------------------------------- networks


def _clips_of(geometry: inputs.ClipGeometry):
    shape = (3, geometry.clip_len, geometry.crop, geometry.crop)
    return tensor_of(5, lambda x: tuple(x.shape[1:]) == shape)


R2PLUS1D = Network("VideoResNet", videonets.R2PLUS1D_DIM, "rows", videonets.r2plus1d_features,
                   "[n, 3, 16, 112, 112]", _clips_of(inputs.R2PLUS1D_CLIPS), build=videonets.build_r2plus1d,
                   file=R2PLUS1D_FILE, own_init=True)
S3D = Network("S3D", videonets.S3D_DIM, "rows", videonets.s3d_features, "[n, 3, 16, 224, 224]",
              _clips_of(inputs.S3D_CLIPS), build=videonets.build_s3d, file=S3D_FILE, own_init=True)

# ----------------------------------------------------------------------------- prepare
# inputs.r2plus1d_clips / inputs.s3d_clips: frames -> Kinetics-normalised clips [n, 3, 16, S, S].

# ----------------------------------------------------------------------------- example inputs


def _example(geometry: inputs.ClipGeometry):
    def example(videos: int, frames: int, size: int, seed: int) -> list:
        """ceil(frames / 16) normalised clips at the network's own crop (`size` does not apply)."""
        gen = generator(seed)
        n = -(-frames // geometry.clip_len)
        return [torch.randn(n, 3, geometry.clip_len, geometry.crop, geometry.crop, generator=gen)
                for _ in range(videos)]
    return example

# ----------------------------------------------------------------------------- entries


r2plus1d = Modality(
    name="r2plus1d", summary="R(2+1)D-18 on 16-frame clips", source=StageSource(frames_stage),
    prepare=inputs.r2plus1d_clips, network=R2PLUS1D,
    cached="`[ceil(T/16), 512]`, one row per 16-frame clip (112 px)",
    batch={"cpu": 4, "cuda": 64}, videos_per_call={"cpu": 1, "cuda": 8},
    example=_example(inputs.R2PLUS1D_CLIPS), label="R(2+1)D", column="RGB", default=False)

s3d = Modality(
    name="s3d", summary="S3D on 16-frame clips", source=StageSource(frames_stage),
    prepare=inputs.s3d_clips, network=S3D,
    cached="`[ceil(T/16), 1024]`, one row per 16-frame clip (224 px)",
    batch={"cpu": 2, "cuda": 32}, videos_per_call={"cpu": 1, "cuda": 8},
    example=_example(inputs.S3D_CLIPS), label="S3D", column="RGB", default=False)

MODALITIES = (r2plus1d, s3d)
