"""A backbone ready to embed: a registered network with its weights, on a device, batched.

    bb = load_backbone("rgb", weights="weights", device="cuda")   # or weights="random"
    x = bb.prepare(frames)             # one video's stage output -> model input (features.inputs)
    seqs = bb.embed([x1, x2, ...])     # -> [np.ndarray float32 [L_i, bb.dim], ...], one per video

What each modality reads, which network and checkpoint it uses and what it caches is declared
once, in its registry entry (`features.modalities`; the built-ins in `features/zoo/`, others from
plugins; `python -m features.modalities --markdown` prints the table).
This module is the same for all of them.

Batching: `embed` takes any number of videos of any lengths. With the "clips" layout (I3D)
items of equal shape are stacked into batches of `batch_size` clips; with the "rows" layout
(VGGish examples, ResNet-18 frames, captions) the rows of all videos are concatenated, run
`batch_size` rows at a time and split back per video. Results do not depend on how videos are
grouped into calls (up to float rounding on the GPU). `batch_size` counts rows per forward pass;
`videos_per_call` is the number of videos a driver should gather per `embed` call (its loader
batch), chosen per device to bound host memory.

Devices: 'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available). On CUDA with `amp=True` the
forward runs under autocast in bfloat16 (float16 where the GPU lacks bfloat16); outputs are
always float32 numpy arrays. On the CPU everything stays float32.

Weights: `weights` is a folder holding the network's checkpoint (`make weights` fetches them),
or 'random' for a seeded random initialisation (deterministic for a given `seed`; convolutions
and linear layers Kaiming-normal (fan-in, ReLU gain) with zero biases so activations keep their
scale through the depth, BatchNorm at identity; networks from torchvision and transformers
declared `own_init` keep their library constructor's initialisation instead, seeded the same way). A missing file raises `MissingWeightsError`
naming the file, its URL and the folder to put it in. A network whose weights ship inside a
Python package (the text encoder) ignores `weights`: it has no random variant and is always
the real model.
"""
from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import modalities
from .checkpoints import sha256_file
from .modalities import Modality, WeightFile


class MissingWeightsError(FileNotFoundError):
    """A backbone checkpoint is not in the weights folder."""


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def _missing_message(modality: str, folder: Path, missing: Sequence[WeightFile]) -> str:
    where = f"folder {folder} does not exist" if not folder.is_dir() else f"not found in {folder}"
    lines = [f"{modality} backbone: checkpoint {', '.join(f.name for f in missing)} {where}."]
    lines.append("Fetch with `make weights` (needs network access), or by hand:")
    for f in missing:
        lines.append(f"  {f.url}\n      -> put it at {folder / f.name}")
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


def random_model(modality: Modality, seed: int) -> nn.Module:
    """The modality's architecture with seeded random weights; the global RNG is left untouched."""
    if modality.network.build is None:
        raise ValueError(f"{modality.name}: its network has no random variant (its weights ship with a package)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = modality.network.build()
        if not modality.network.own_init:
            _random_init(model)
    return model


def _describe(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if hasattr(x, "shape") else f"a {type(x).__name__}"


class Backbone:
    """A frozen feature extractor for one registered modality; see the module docstring."""

    def __init__(
        self,
        modality: str,
        model: Any,
        checkpoint: str,
        sha256: str,
        device: torch.device,
        amp: bool = True,
        post: nn.Module | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        dim: int | None = None,
        options: dict | None = None,
    ):
        self.spec = modalities.get(modality)
        self.modality = modality
        self.model = model
        self.checkpoint = checkpoint
        self.sha256 = sha256
        self.device = device
        self.post = post
        self.seed = seed
        self.options = dict(options or {})
        self.dim = int(dim or self.spec.network.dim)
        self.amp = bool(amp) and device.type == "cuda"
        if self.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.amp_dtype = torch.float32
        kind = "cuda" if device.type == "cuda" else "cpu"
        # rows per forward pass: clips, examples, frames or captions, by the network's layout
        self.batch_size = batch_size or self.spec.batch[kind]
        # videos per embed() call a driver should gather (a loader batch); not rows
        self.videos_per_call = self.spec.videos_per_call[kind]

    @property
    def pca(self) -> nn.Module | None:
        """VGGish's PCA post-processing when it is on (the audio modality's `post`)."""
        return self.post

    def __repr__(self) -> str:
        return (
            f"Backbone({self.modality!r}, checkpoint={self.checkpoint!r}, dim={self.dim}, "
            f"device={str(self.device)!r}, dtype={str(self.amp_dtype).replace('torch.', '')})"
        )

    def info(self) -> dict:
        """Provenance for the feature cache's attributes."""
        return {
            "modality": self.modality,
            "network": self.spec.network.name,
            "checkpoint": self.checkpoint,
            "sha256": self.sha256,
            "dim": self.dim,
            "pca": self.post is not None,
            "seed": self.seed,
            "device": str(self.device),
            "dtype": str(self.amp_dtype).replace("torch.", ""),
            **{k: v for k, v in self.options.items() if k != "pca"},
        }

    # ---- input ------------------------------------------------------------------------------
    def prepare(self, array) -> Any:
        """One video's stage output -> CPU model input (see features/inputs.py)."""
        return self.spec.prepare(array)

    # ---- forward ----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _check(self, i: int, x: Any) -> None:
        if not isinstance(x, (torch.Tensor, list)):
            raise TypeError(f"embed: item {i} is a {type(x).__name__}; pass the output of prepare()")
        if not self.spec.network.accepts(x):
            raise ValueError(f"embed ({self.modality}): item {i} has {_describe(x)}, expected {self.spec.network.expects}")

    def _forward(self, x: Any) -> torch.Tensor:
        """One batch through the network (and the post-processor) -> float32 on the CPU."""
        if isinstance(x, torch.Tensor):
            x = x.to(self.device, non_blocking=True)
        with self._autocast():
            y = self.spec.network.forward(self.model, x)
        y = y.float()
        if self.post is not None:
            y = self.post(y)
        return y.cpu()

    def embed(self, items: Sequence[Any], batch_size: int | None = None) -> list[np.ndarray]:
        """Prepared inputs of several videos -> one float32 array [L_i, dim] per video, in order."""
        items = list(items)
        for i, x in enumerate(items):
            self._check(i, x)
        bs = max(1, int(batch_size or self.batch_size))
        out: list[np.ndarray | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = defaultdict(list)
        with torch.inference_mode():
            if self.spec.network.layout == "clips":
                for i, x in enumerate(items):
                    groups[tuple(x.shape)].append(i)
                for idxs in groups.values():
                    for s in range(0, len(idxs), bs):
                        chunk = idxs[s : s + bs]
                        feats = self._forward(torch.stack([items[i] for i in chunk])).numpy()
                        for j, i in enumerate(chunk):
                            out[i] = np.ascontiguousarray(feats[j], dtype=np.float32)
                return out  # type: ignore[return-value]
            for i, x in enumerate(items):
                if len(x) == 0:
                    out[i] = np.zeros((0, self.dim), dtype=np.float32)
                else:
                    groups[tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else ("list",)].append(i)
            for idxs in groups.values():
                if isinstance(items[idxs[0]], torch.Tensor):
                    rows: Any = torch.cat([items[i] for i in idxs])
                else:
                    rows = [r for i in idxs for r in items[i]]
                ys = torch.cat([self._forward(rows[s : s + bs]) for s in range(0, len(rows), bs)])
                pos = 0
                for i in idxs:
                    n = len(items[i])
                    out[i] = np.ascontiguousarray(ys[pos : pos + n].numpy(), dtype=np.float32)
                    pos += n
        return out  # type: ignore[return-value]


def load_backbone(
    modality: str,
    weights: str | os.PathLike = "weights",
    device: str | torch.device = "cpu",
    seed: int = 0,
    amp: bool = True,
    batch_size: int | None = None,
    **options,
) -> Backbone:
    """A frozen, eval-mode backbone for a registered modality (`features.modalities`).

    weights: a folder with the checkpoint files, or 'random' (seeded by `seed`).
    options: the modality's declared options (e.g. `pca=True` for audio, `text_model=...` for
    text); options of other modalities are ignored.
    """
    spec = modalities.get(modality)
    net = spec.network
    dev = resolve_device(device)
    known = {o.name for o in net.options}
    opts = {k: v for k, v in spec.resolve_options(options).items() if k in known}
    use_post = net.post is not None and bool(opts.get(net.post.option))
    post: nn.Module | None = None
    dim = None
    if net.packaged is not None:
        model, checkpoint, sha, dim = net.packaged(opts, dev)
        used_seed: int | None = None
    elif str(weights) == "random":
        model = random_model(spec, seed)
        if use_post:
            post = net.post.random(seed)
        checkpoint = sha = "random"
        used_seed = seed
    else:
        folder = Path(weights)
        files = [net.file] + ([net.post.file] if use_post else [])
        missing = [f for f in files if not (folder / f.name).is_file()]
        if missing:
            raise MissingWeightsError(_missing_message(modality, folder, missing))
        model = net.file.load(folder / net.file.name)
        checkpoint, sha = net.file.name, sha256_file(folder / net.file.name)
        if use_post:
            post = net.post.file.load(folder / net.post.file.name)
            checkpoint = f"{checkpoint}+{net.post.file.name}"
            sha = f"{sha}+{sha256_file(folder / net.post.file.name)}"
        used_seed = None
    model.eval().requires_grad_(False).to(dev)
    if post is not None:
        post.eval().requires_grad_(False).to(dev)
    return Backbone(modality, model, checkpoint, sha, dev, amp=amp, post=post, seed=used_seed,
                    batch_size=batch_size, dim=dim, options=opts)
