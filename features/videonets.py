"""Kinetics-400 clip models from torchvision: R(2+1)D-18 and S3D, as frozen feature extractors.

The architectures are torchvision's own (`torchvision.models.video.r2plus1d_18`, `s3d`, built with
`weights=None` and 400 classes, so their state-dict keys are those of the published files); this
module only says which activation is the feature and loads the published files strictly:

    model = load_r2plus1d("weights/r2plus1d_18-91a641e6.pth")     # eval mode, strict
    feats = r2plus1d_features(model, clips)    # [n, 3, 16, 112, 112] (features.inputs.r2plus1d_clips) -> [n, 512]
    feats = s3d_features(load_s3d(path), clips)  # [n, 3, 16, 224, 224] (features.inputs.s3d_clips) -> [n, 1024]

The feature is the input of each network's classifier: R(2+1)D's global average pool (what `fc`
reads), S3D's `avgpool` output averaged over what is left of time and space (its classifier is a
1x1x1 convolution followed by that same mean, so the logits are an affine map of this vector).
tests/test_more_backbones.py checks both identities against torchvision's full forward.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .checkpoints import load_strict

R2PLUS1D_DIM = 512
S3D_DIM = 1024
KINETICS_CLASSES = 400


def build_r2plus1d() -> nn.Module:
    """torchvision's R(2+1)D-18 (`VideoResNet`), 400 classes, its constructor's own initialisation."""
    from torchvision.models.video import r2plus1d_18

    return r2plus1d_18(weights=None, num_classes=KINETICS_CLASSES)


def build_s3d() -> nn.Module:
    """torchvision's S3D, 400 classes, its constructor's own initialisation."""
    from torchvision.models.video import s3d

    return s3d(weights=None, num_classes=KINETICS_CLASSES)


def load_r2plus1d(path: str | os.PathLike) -> nn.Module:
    """The published file (`R2Plus1D_18_Weights.KINETICS400_V1`) loaded strictly, classifier included."""
    return load_strict(build_r2plus1d(), path).eval()


def load_s3d(path: str | os.PathLike) -> nn.Module:
    """The published file (`S3D_Weights.KINETICS400_V1`) loaded strictly, classifier included."""
    return load_strict(build_s3d(), path).eval()


def r2plus1d_features(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """[n, 3, T, H, W] -> [n, 512]: `VideoResNet.forward` up to the average pool (fc's input)."""
    x = model.stem(clips)
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return model.avgpool(x).flatten(1)


def s3d_features(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """[n, 3, T, H, W] -> [n, 1024]: `S3D.features`, its `avgpool` (kernel 2x7x7, stride 1), then
    the mean over time and space that `S3D.forward` takes after its classifier."""
    return model.avgpool(model.features(clips)).mean(dim=(2, 3, 4))
