"""VGGish (Hershey et al., 2017) audio embedding network and its AudioSet PCA post-processing.

State-dict layout is that of the common PyTorch conversion (`vggish-10086976.pth`: keys
`features.N.*` and `embeddings.N.*`; `vggish_pca_params-970ea276.pth`: `pca_eigen_vectors`,
`pca_means`), checked by `tests/test_vggish.py` against `shared/reference/vggish*_keys.txt`.

    net = VGGish.load_checkpoint("weights/vggish-10086976.pth")          # eval mode, strict
    emb = net(log_mel)          # [N, 1, 96, 64] (96 frames x 64 mel bands) -> [N, 128], >= 0
    pca = VGGishPCA.load_checkpoint("weights/vggish_pca_params-970ea276.pth")
    q = pca(emb)                # [N, 128] float32 holding integers 0..255 (AudioSet's released form)

The conv stack ends at [N, 512, 6, 4] (channel, time, frequency in PyTorch's NCHW); TensorFlow
flattened the map as NHWC, i.e. in (time, frequency, channel) order, so the map is permuted to
[N, 6, 4, 512] before flattening, or the first FC layer's weights would be applied to the wrong
values.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .checkpoints import load_strict

EMBEDDING_DIM = 128
EXAMPLE_FRAMES = 96
MEL_BANDS = 64
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0


def _vgg_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 1
    # 'M' = 2x2 max-pool; indices of the convs come out as 0, 3, 6, 8, 11, 13 as published.
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            cin = int(v)
    return nn.Sequential(*layers)


class VGGish(nn.Module):
    """log-mel examples [N, 1, 96, 64] -> embeddings [N, 128] (after the final ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg_features()
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, EXAMPLE_FRAMES, MEL_BANDS):
            raise ValueError(f"VGGish expects [N, 1, {EXAMPLE_FRAMES}, {MEL_BANDS}], got {tuple(x.shape)}")
        x = self.features(x)  # [N, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # TF order: time, frequency, channel
        return self.embeddings(x)

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike) -> "VGGish":
        """Strictly load a file in the published layout; returned in eval mode."""
        return load_strict(cls(), path).eval()


class VGGishPCA(nn.Module):
    """AudioSet post-processing: y = E (x - mu), clip to [-2, 2], round((y + 2) * 255 / 4).

    Buffers `pca_eigen_vectors` [128, 128] (E) and `pca_means` [128, 1] (mu), as published.
    Output stays float32 (values are whole numbers 0..255); `.to(torch.uint8)` is lossless.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pca_eigen_vectors", torch.eye(EMBEDDING_DIM))
        self.register_buffer("pca_means", torch.zeros(EMBEDDING_DIM, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != EMBEDDING_DIM:
            raise ValueError(f"VGGishPCA expects [N, {EMBEDDING_DIM}], got {tuple(embeddings.shape)}")
        x = embeddings.float()
        applied = (self.pca_eigen_vectors.float() @ (x.t() - self.pca_means.float())).t()
        clipped = applied.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))

    @classmethod
    def load_checkpoint(cls, path: str | os.PathLike) -> "VGGishPCA":
        return load_strict(cls(), path).eval()


def postprocess(embeddings: torch.Tensor, pca: VGGishPCA) -> torch.Tensor:
    """Functional alias of `pca(embeddings)`."""
    return pca(embeddings)
