"""Backbone registry for the feature driver: one call gives a ready, frozen model per modality.

    bb = load_backbone("rgb", weights="weights", device="cuda")   # or weights="random"
    x = bb.prepare(frames)             # one video's stage output -> model input (features.inputs)
    seqs = bb.embed([x1, x2, ...])     # -> [np.ndarray float32 [L_i, bb.dim], ...], one per video

| modality | stage output (one video)       | model                  | checkpoint (in the weights folder) | sequence [L, D]        |
|----------|--------------------------------|------------------------|------------------------------------|------------------------|
| rgb      | frames uint8 [T, S, S, 3]      | I3D, 3 channels        | rgb_imagenet.pt                    | [ceil(T/8), 1024]      |
| flow     | flow uint8 [T, S, S, 2]        | I3D, 2 channels        | flow_imagenet.pt                   | [ceil(T/8), 1024]      |
| audio    | log-mel float32 [N, 96, 64]    | VGGish (+ PCA)         | vggish-10086976.pth (+ vggish_pca_params-970ea276.pth) | [N, 128] |
| rgb2d    | frames uint8 [T, S, S, 3]      | ResNet-18              | resnet18-f37072fd.pth              | [T, 512]               |

rgb/flow: Mixed_5c [B, 1024, T', H', W'] averaged over H', W' (T' = ceil(T/8): 10 for 79 frames).
audio: one 128-d embedding per 0.96 s example; with `pca=True` the AudioSet PCA post-processing
(values 0..255 as float32). N may be 0 (no audio / shorter than 0.96 s): the sequence is [0, 128].

Batching: `embed` takes any number of videos of any lengths. rgb/flow clips of equal shape are
stacked into batches of `batch_size` clips; audio examples and rgb2d frames of all videos are
concatenated, run `batch_size` rows at a time and split back per video. Results do not depend on
how videos are grouped into calls (up to float rounding on the GPU). `batch_size` counts rows per
forward pass (clips, examples or frames); `videos_per_call` is the number of videos a driver
should gather per `embed` call (its loader batch), chosen per device to bound host memory.

Devices: 'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available). On CUDA with `amp=True` the
forward runs under autocast in bfloat16 (float16 where the GPU lacks bfloat16); outputs are
always float32 numpy arrays. On the CPU everything stays float32.

Weights: `weights` is a folder holding the files above (`make weights` fetches them), or
'random' for a seeded random initialisation (deterministic for a given `seed`; convolutions and
linear layers Kaiming-normal (fan-in, ReLU gain) with zero biases so activations keep their
scale through the depth, BatchNorm at identity). A missing file raises `MissingWeightsError`
naming the file, its URL and the folder to put it in.
"""
from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import inputs
from .checkpoints import sha256_file
from .i3d import FEATURE_DIM as I3D_DIM
from .i3d import InceptionI3d
from .resnet import FEATURE_DIM as RESNET_DIM
from .resnet import ResNet18Features
from .vggish import EMBEDDING_DIM as VGGISH_DIM
from .vggish import VGGish, VGGishPCA
from .weights import URLS

MODALITIES = ("rgb", "flow", "audio", "rgb2d")
CHECKPOINTS = {
    "rgb": "rgb_imagenet.pt",
    "flow": "flow_imagenet.pt",
    "audio": "vggish-10086976.pth",
    "rgb2d": "resnet18-f37072fd.pth",
}
PCA_CHECKPOINT = "vggish_pca_params-970ea276.pth"
DIMS = {"rgb": I3D_DIM, "flow": I3D_DIM, "audio": VGGISH_DIM, "rgb2d": RESNET_DIM}
# Default rows per forward: clips for rgb/flow, examples for audio, frames for rgb2d.
DEFAULT_BATCH = {
    "cpu": {"rgb": 1, "flow": 1, "audio": 64, "rgb2d": 32},
    "cuda": {"rgb": 8, "flow": 8, "audio": 512, "rgb2d": 256},
}
# Default videos per `embed` call (what a driver should put in one loader batch): about one
# forward's worth of rows, so host memory stays bounded (an rgb2d video is 79 frames, ~48 MB).
DEFAULT_VIDEOS_PER_CALL = {
    "cpu": {"rgb": 1, "flow": 1, "audio": 8, "rgb2d": 1},
    "cuda": {"rgb": 8, "flow": 8, "audio": 32, "rgb2d": 4},
}
_PREPARE: dict[str, Callable] = {
    "rgb": inputs.rgb_clip,
    "flow": inputs.flow_clip,
    "audio": inputs.log_mel_batch,
    "rgb2d": inputs.imagenet_frames,
}


class MissingWeightsError(FileNotFoundError):
    """A backbone checkpoint is not in the weights folder."""


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def _missing_message(modality: str, folder: Path, missing: Sequence[str]) -> str:
    where = f"folder {folder} does not exist" if not folder.is_dir() else f"not found in {folder}"
    lines = [f"{modality} backbone: checkpoint {', '.join(missing)} {where}."]
    lines.append("Fetch with `make weights` (needs network access), or by hand:")
    for name in missing:
        lines.append(f"  {URLS[name]}\n      -> put it at {folder / name}")
    lines.append(
        "(the folder is set with WEIGHTS=DIR for make, --weights DIR for the driver). "
        "To run without trained weights use `--weights random` (seeded random backbones)."
    )
    return "\n".join(lines)


def _random_init(model: nn.Module) -> None:
    """Variance-preserving init for deep ReLU stacks; called under a seeded RNG."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()


def _random_model(modality: str, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if modality in ("rgb", "flow"):
            model: nn.Module = InceptionI3d(400, 3 if modality == "rgb" else 2)
        elif modality == "audio":
            model = VGGish()
        else:
            model = ResNet18Features()
        _random_init(model)
    return model


def _random_pca(seed: int) -> VGGishPCA:
    pca = VGGishPCA()
    gen = torch.Generator().manual_seed(seed + 1)
    q, _ = torch.linalg.qr(torch.randn(VGGISH_DIM, VGGISH_DIM, generator=gen, dtype=torch.float64))
    pca.pca_eigen_vectors.copy_(q.t().float())
    pca.pca_means.copy_(torch.rand(VGGISH_DIM, 1, generator=gen) * 0.5)
    return pca


class Backbone:
    """A frozen feature extractor for one modality; see the module docstring."""

    def __init__(
        self,
        modality: str,
        model: nn.Module,
        checkpoint: str,
        sha256: str,
        device: torch.device,
        amp: bool = True,
        pca: VGGishPCA | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
    ):
        self.modality = modality
        self.model = model
        self.checkpoint = checkpoint
        self.sha256 = sha256
        self.device = device
        self.pca = pca
        self.seed = seed
        self.dim = DIMS[modality]
        self.amp = bool(amp) and device.type == "cuda"
        if self.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.amp_dtype = torch.float32
        kind = "cuda" if device.type == "cuda" else "cpu"
        # rows per forward pass: clips (rgb/flow), examples (audio), frames (rgb2d)
        self.batch_size = batch_size or DEFAULT_BATCH[kind][modality]
        # videos per embed() call a driver should gather (a loader batch); not rows
        self.videos_per_call = DEFAULT_VIDEOS_PER_CALL[kind][modality]

    def __repr__(self) -> str:
        return (
            f"Backbone({self.modality!r}, checkpoint={self.checkpoint!r}, dim={self.dim}, "
            f"device={str(self.device)!r}, dtype={str(self.amp_dtype).replace('torch.', '')})"
        )

    def info(self) -> dict:
        """Provenance for the feature cache's attributes."""
        return {
            "modality": self.modality,
            "checkpoint": self.checkpoint,
            "sha256": self.sha256,
            "dim": self.dim,
            "pca": self.pca is not None,
            "seed": self.seed,
            "device": str(self.device),
            "dtype": str(self.amp_dtype).replace("torch.", ""),
        }

    # ---- input ------------------------------------------------------------------------------
    def prepare(self, array) -> torch.Tensor:
        """One video's stage output -> CPU float32 model input (see features/inputs.py)."""
        return _PREPARE[self.modality](array)

    # ---- forward ----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _check(self, i: int, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"embed: item {i} is a {type(x).__name__}; pass the output of prepare()")
        if self.modality in ("rgb", "flow"):
            c = 3 if self.modality == "rgb" else 2
            ok = x.dim() == 4 and x.shape[0] == c and x.shape[1] > 0
            want = f"[{c}, T, H, W] with T > 0"
        elif self.modality == "audio":
            ok = x.dim() == 4 and tuple(x.shape[1:]) == (1, 96, 64)
            want = "[N, 1, 96, 64]"
        else:
            ok = x.dim() == 4 and x.shape[1] == 3
            want = "[T, 3, H, W]"
        if not ok:
            raise ValueError(f"embed ({self.modality}): item {i} has shape {tuple(x.shape)}, expected {want}")

    def _forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        """audio / rgb2d: [n, ...] -> [n, D] float32 on CPU."""
        with self._autocast():
            y = self.model(x.to(self.device, non_blocking=True))
        y = y.float()
        if self.pca is not None:
            y = self.pca(y)
        return y.cpu()

    def _forward_clips(self, x: torch.Tensor) -> np.ndarray:
        """rgb / flow: [B, C, T, H, W] -> [B, T', 1024] float32."""
        with self._autocast():
            fmap = self.model.extract_features(x.to(self.device, non_blocking=True))
        return fmap.float().mean(dim=(3, 4)).transpose(1, 2).cpu().numpy()

    def embed(self, items: Sequence[torch.Tensor], batch_size: int | None = None) -> list[np.ndarray]:
        """Prepared inputs of several videos -> one float32 array [L_i, dim] per video, in order."""
        items = list(items)
        for i, x in enumerate(items):
            self._check(i, x)
        bs = max(1, int(batch_size or self.batch_size))
        out: list[np.ndarray | None] = [None] * len(items)
        with torch.inference_mode():
            if self.modality in ("rgb", "flow"):
                groups: dict[tuple, list[int]] = defaultdict(list)
                for i, x in enumerate(items):
                    groups[tuple(x.shape)].append(i)
                for idxs in groups.values():
                    for s in range(0, len(idxs), bs):
                        chunk = idxs[s : s + bs]
                        feats = self._forward_clips(torch.stack([items[i] for i in chunk]))
                        for j, i in enumerate(chunk):
                            out[i] = np.ascontiguousarray(feats[j], dtype=np.float32)
            else:
                groups = defaultdict(list)
                for i, x in enumerate(items):
                    if x.shape[0] == 0:
                        out[i] = np.zeros((0, self.dim), dtype=np.float32)
                    else:
                        groups[tuple(x.shape[1:])].append(i)
                for idxs in groups.values():
                    rows = torch.cat([items[i] for i in idxs])
                    ys = torch.cat([self._forward_rows(rows[s : s + bs]) for s in range(0, rows.shape[0], bs)])
                    pos = 0
                    for i in idxs:
                        n = items[i].shape[0]
                        out[i] = np.ascontiguousarray(ys[pos : pos + n].numpy(), dtype=np.float32)
                        pos += n
        return out  # type: ignore[return-value]


def load_backbone(
    modality: str,
    weights: str | os.PathLike = "weights",
    device: str | torch.device = "cpu",
    seed: int = 0,
    pca: bool = False,
    amp: bool = True,
    batch_size: int | None = None,
) -> Backbone:
    """A frozen, eval-mode backbone for `modality` in ('rgb', 'flow', 'audio', 'rgb2d').

    weights: a folder with the checkpoint files, or 'random' (seeded by `seed`).
    pca: audio only (VGGish PCA post-processing); ignored for the other modalities.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    dev = resolve_device(device)
    use_pca = bool(pca) and modality == "audio"
    pca_module: VGGishPCA | None = None
    if str(weights) == "random":
        model = _random_model(modality, seed)
        if use_pca:
            pca_module = _random_pca(seed)
        checkpoint = sha = "random"
        used_seed: int | None = seed
    else:
        folder = Path(weights)
        names = [CHECKPOINTS[modality]] + ([PCA_CHECKPOINT] if use_pca else [])
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise MissingWeightsError(_missing_message(modality, folder, missing))
        path = folder / CHECKPOINTS[modality]
        if modality in ("rgb", "flow"):
            model = InceptionI3d.load_checkpoint(path, in_channels=3 if modality == "rgb" else 2)
        elif modality == "audio":
            model = VGGish.load_checkpoint(path)
        else:
            model = ResNet18Features.load_checkpoint(path)
        checkpoint, sha = names[0], sha256_file(path)
        if use_pca:
            pca_module = VGGishPCA.load_checkpoint(folder / PCA_CHECKPOINT)
            checkpoint = f"{checkpoint}+{PCA_CHECKPOINT}"
            sha = f"{sha}+{sha256_file(folder / PCA_CHECKPOINT)}"
        used_seed = None
    model.eval().requires_grad_(False).to(dev)
    if pca_module is not None:
        pca_module.eval().requires_grad_(False).to(dev)
    return Backbone(modality, model, checkpoint, sha, dev, amp=amp, pca=pca_module, seed=used_seed,
                    batch_size=batch_size)
