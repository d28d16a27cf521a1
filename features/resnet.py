"""ResNet-18 per-frame feature extractor (the ConvNet of the ConvNet+LSTM baseline).

`ResNet18Features` *is* torchvision's `ResNet` class built exactly as `torchvision.models.resnet18`
builds it (BasicBlock, [2, 2, 2, 2], weights=None), so its state-dict keys are torchvision's,
`fc.*` included. Only `forward` differs: it stops at the global average pool.

    net = ResNet18Features.load_checkpoint("weights/resnet18-f37072fd.pth")   # eval mode, strict
    feats = net(frames)      # [N, 3, H, W], ImageNet-normalised (features.inputs.imagenet_frames) -> [N, 512]
    logits = net.classify(frames)                                           # [N, 1000], ImageNet head

Loading: every backbone key must be present with its shape. The `fc.*` head of the published file
is accepted and loaded; a file without it is accepted too (the head is unused for features).
"""
from __future__ import annotations

import os

import torch
from torchvision.models.resnet import BasicBlock, ResNet

from .checkpoints import load_strict

FEATURE_DIM = 512


class ResNet18Features(ResNet):
    """torchvision ResNet-18 whose forward returns the 512-d pooled features."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The full torchvision forward (ImageNet logits)."""
        return self.fc(self.forward(x))

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike) -> "ResNet18Features":
        return load_strict(cls(), path, optional_prefixes=("fc.",)).eval()
