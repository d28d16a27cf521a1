"""Where a stage output becomes a model input tensor. One function per backbone input.

| stage output (numpy)                    | function           | model input (float32 torch)          | backbone     |
|-----------------------------------------|--------------------|--------------------------------------|--------------|
| frames uint8 [T, S, S, 3] (RGB)         | `rgb_clip`         | [3, T, S, S], x / 127.5 - 1          | I3D RGB      |
| flow   uint8 [T, S, S, 2] (x, y)        | `flow_clip`        | [2, T, S, S], q / 127.5 - 1          | I3D flow     |
| frames uint8 [T, S, S, 3] (RGB)         | `imagenet_frames`  | [T, 3, S, S], (x/255 - mean) / std   | ResNet-18    |
| log-mel float32 [N, 96, 64]             | `log_mel_batch`    | [N, 1, 96, 64], unchanged values     | VGGish       |
| cleaned caption (str)                   | `caption`          | [caption]: one row, the encoder tokenises | sentence encoder |

Flow: the flow stage clips each displacement f to [-bound, bound] and stores
q = round((f + bound) * 255 / (2 * bound)) as uint8. Then q / 127.5 - 1 = (f + bound) / bound - 1
= f / bound up to the rounding step (at most 1/255 of the range), which is I3D's flow input:
displacement over the clip bound, in [-1, 1]. The same map as the RGB one, x / 127.5 - 1.

Every function accepts a numpy array or a torch tensor, checks dtype and shape (a wrong input
raises `ValueError` saying what was expected), and returns a new contiguous CPU float32 tensor.
Frames need not be square: [T, H, W, C] works the same way.
"""
from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_tensor(array, name: str, dtypes: tuple, ndim: int, last: int | None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else torch.as_tensor(array)
    if t.dtype not in dtypes:
        raise ValueError(f"{name}: expected dtype {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if t.dim() != ndim or (last is not None and t.shape[-1] != last):
        want = f"[T, H, W, {last}]" if last is not None else f"{ndim} dimensions"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if t.shape[0] == 0 and last is not None:
        raise ValueError(f"{name}: empty clip (0 frames)")
    return t


def rgb_clip(frames) -> torch.Tensor:
    """uint8 RGB frames [T, H, W, 3] -> float32 [3, T, H, W] in [-1, 1] (x / 127.5 - 1)."""
    t = _as_tensor(frames, "rgb_clip", (torch.uint8,), 4, 3)
    return (t.permute(3, 0, 1, 2).float() / 127.5 - 1.0).contiguous()


def flow_clip(flow) -> torch.Tensor:
    """uint8 quantised flow [T, H, W, 2] (x, y) -> float32 [2, T, H, W] in [-1, 1] ≈ f / bound."""
    t = _as_tensor(flow, "flow_clip", (torch.uint8,), 4, 2)
    return (t.permute(3, 0, 1, 2).float() / 127.5 - 1.0).contiguous()


def imagenet_frames(frames) -> torch.Tensor:
    """uint8 RGB frames [T, H, W, 3] -> float32 [T, 3, H, W], ImageNet mean/std normalised."""
    t = _as_tensor(frames, "imagenet_frames", (torch.uint8,), 4, 3)
    x = t.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def log_mel_batch(examples) -> torch.Tensor:
    """float32 log-mel examples [N, 96, 64] -> [N, 1, 96, 64]. N = 0 (audio shorter than
    0.96 s, or none) gives an empty [0, 1, 96, 64] batch."""
    t = _as_tensor(examples, "log_mel_batch", (torch.float32, torch.float64, torch.float16), 3, None)
    if tuple(t.shape[1:]) != (96, 64):
        raise ValueError(f"log_mel_batch: expected shape [N, 96, 64], got {tuple(t.shape)}")
    return t.to(torch.float32, copy=True).unsqueeze(1).contiguous()


def caption(text) -> list[str]:
    """A cleaned caption -> the encoder's input: a list of one string (one row per caption)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"caption: expected a non-empty string, got {text!r}")
    return [text]
