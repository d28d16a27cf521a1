"""Inflated 3D ConvNet (I3D, Inception-v1; Carreira and Zisserman 2017), frozen feature backbone.

Written from the published architecture so that `state_dict()` keys and shapes are exactly those
of the widely used PyTorch conversion (`rgb_imagenet.pt`, 3 input channels, and
`flow_imagenet.pt`, 2 input channels; 400 Kinetics classes). `tests/test_i3d.py` checks this
against the key listings in `shared/reference/`.

    model = InceptionI3d.load_checkpoint("weights/rgb_imagenet.pt")   # eval mode, strict
    fmap = model.extract_features(x)     # x [B, C, T, H, W] in [-1, 1] -> Mixed_5c [B, 1024, T', H', W']
    logits = model(x)                    # [B, num_classes, T'']

Padding is TensorFlow SAME, computed from the actual input size in every dimension, so any clip
size works, including clips shorter than the receptive field (1 frame, 112x112 ...): every
stride-s stage maps a size n to ceil(n / s). 79 frames at 224x224 give Mixed_5c [B, 1024, 10, 7, 7];
16 frames at 112x112 give [B, 1024, 2, 4, 4].

The logits head uses AvgPool3d with kernel (2, 7, 7), stride 1. On Mixed_5c maps smaller than
that (short clips, inputs below 224x224) the kernel is clamped to the map size in each dimension
(e.g. (2, 4, 4) for a 4x4 map, (1, 7, 7) for a 1-frame map), so the head never crashes; for
maps at least (2, 7, 7) this is the published head exactly. T'' = T' - k_t + 1.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointError, load_strict, read_state_dict

Triple = tuple[int, int, int]


def _triple(v: int | Sequence[int]) -> Triple:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected 3 values, got {v!r}")
    return t  # type: ignore[return-value]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding (front, back) for one dimension of length `size`."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: Triple, stride: Triple) -> torch.Tensor:
    """Zero-pad a [B, C, T, H, W] tensor TF-SAME style for the given kernel and stride."""
    pads: list[int] = []
    # F.pad takes pairs from the last dimension backwards: (W_front, W_back, H_..., T_...).
    for dim, k, s in zip((4, 3, 2), kernel[::-1], stride[::-1]):
        pads.extend(same_padding(int(x.shape[dim]), k, s))
    if any(pads):
        x = F.pad(x, pads)
    return x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF-SAME padding. Pads with zeros: inputs are post-ReLU (>= 0), so zeros
    never win over a real value and the result equals TF's pooling, which ignores the padding."""

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int]):
        super().__init__()
        self.kernel_size = _triple(kernel_size)
        self.stride = _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel_size, self.stride), self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm3d (eps 1e-3, momentum 0.01) + ReLU with TF-SAME padding.

    With `use_batch_norm=False, use_bias=True, activation=False` it is the logits unit.
    State-dict keys: `conv3d.weight` [, `conv3d.bias`] [, `bn.*`].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_shape: int | Sequence[int] = 1,
        stride: int | Sequence[int] = 1,
        activation: bool = True,
        use_batch_norm: bool = True,
        use_bias: bool = False,
    ):
        super().__init__()
        self.kernel_shape = _triple(kernel_shape)
        self.stride = _triple(stride)
        self.activation = activation
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, self.kernel_shape, stride=self.stride, padding=0, bias=use_bias
        )
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if use_batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(pad_same(x, self.kernel_shape, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        if self.activation:
            x = F.relu(x)
        return x


class InceptionModule(nn.Module):
    """Four branches concatenated on channels.

    out_channels = (b0, b1a, b1b, b2a, b2b, b3b):
    b0 1x1x1 | b1a 1x1x1 -> b1b 3x3x3 | b2a 1x1x1 -> b2b 3x3x3 | 3x3x3 max-pool (stride 1) -> b3b 1x1x1
    """

    def __init__(self, in_channels: int, out_channels: Sequence[int]):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = out_channels
        self.b0 = Unit3D(in_channels, c0, 1)
        self.b1a = Unit3D(in_channels, c1a, 1)
        self.b1b = Unit3D(c1a, c1b, 3)
        self.b2a = Unit3D(in_channels, c2a, 1)
        self.b2b = Unit3D(c2a, c2b, 3)
        self.b3a = MaxPool3dSame(3, 1)
        self.b3b = Unit3D(in_channels, c3b, 1)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# (name, in_channels, (b0, b1a, b1b, b2a, b2b, b3b)) as in the published network.
INCEPTION_CONFIG: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)
# Max-pools that sit in front of a module: name -> (pool name, kernel, stride)
_POOL_BEFORE = {
    "Mixed_3b": ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
}
FEATURE_DIM = 1024
AVG_POOL_KERNEL: Triple = (2, 7, 7)


class InceptionI3d(nn.Module):
    """I3D up to Mixed_5c plus the logits head; see the module docstring."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        # Created first so that the state-dict key order matches the published files.
        self.logits = Unit3D(
            FEATURE_DIM, num_classes, 1, activation=False, use_batch_norm=False, use_bias=True
        )
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, 7, stride=2)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3)
        self._stages: list[str] = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
        for name, cin, outs in INCEPTION_CONFIG:
            if name in _POOL_BEFORE:
                pool_name, k, s = _POOL_BEFORE[name]
                self.add_module(pool_name, MaxPool3dSame(k, s))
                self._stages.append(pool_name)
            self.add_module(name, InceptionModule(cin, outs))
            self._stages.append(name)
        self.dropout = nn.Dropout(dropout)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> Mixed_5c [B, 1024, T', H', W'] with T' = ceil(T/8), H' = ceil(H/32)."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"I3D expects [B, {self.in_channels}, T, H, W], got {tuple(x.shape)}"
            )
        for name in self._stages:
            x = getattr(self, name)(x)
        return x

    @staticmethod
    def pool_kernel(fmap_shape: Sequence[int]) -> Triple:
        """The head's average-pool kernel for a [B, C, T', H', W'] map: (2, 7, 7) clamped to the map."""
        t, h, w = (int(s) for s in fmap_shape[-3:])
        return (min(AVG_POOL_KERNEL[0], t), min(AVG_POOL_KERNEL[1], h), min(AVG_POOL_KERNEL[2], w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> logits [B, num_classes, T'']."""
        x = self.extract_features(x)
        x = F.avg_pool3d(x, self.pool_kernel(x.shape), stride=1)
        x = self.logits(self.dropout(x))
        # [B, classes, T'', 1, 1] for 224x224 input; larger inputs leave H'', W'' > 1: average them.
        return x.mean(dim=(3, 4))

    @classmethod
    def load_checkpoint(
        cls,
        path: str | os.PathLike,
        num_classes: int | None = None,
        in_channels: int | None = None,
        dropout: float = 0.5,
    ) -> "InceptionI3d":
        """Build the model the file describes and load it strictly; returned in eval mode.

        `num_classes` / `in_channels` default to what the file holds (logits and first conv
        shapes); when given they must agree with it, else `CheckpointError`.
        """
        state = read_state_dict(path)
        n_file = _dim(state, "logits.conv3d.weight", 0)
        c_file = _dim(state, "Conv3d_1a_7x7.conv3d.weight", 1)
        for what, asked, found in (("num_classes", num_classes, n_file), ("in_channels", in_channels, c_file)):
            if asked is not None and found is not None and asked != found:
                raise CheckpointError(
                    f"checkpoint {path}: holds {what}={found}, but {what}={asked} was asked for"
                )
        model = cls(
            num_classes=num_classes or n_file or 400,
            in_channels=in_channels or c_file or 3,
            dropout=dropout,
        )
        load_strict(model, path, state=state)
        return model.eval()


def _dim(state: dict[str, torch.Tensor], key: str, axis: int) -> int | None:
    t = state.get(key)
    if t is None or t.dim() <= axis:
        return None
    return int(t.shape[axis])
