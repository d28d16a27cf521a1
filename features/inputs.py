"""Where a stage output becomes a model input tensor: one `prepare` function per backbone input.

Each modality of the registry names its function here (`Modality.prepare`); the table of which
stage output goes through which function to which network is generated from the registry:
`python -m features.modalities --markdown` (the README shows it).

Flow: the flow stage clips each displacement f to [-bound, bound] and stores
q = round((f + bound) * 255 / (2 * bound)) as uint8. Then q / 127.5 - 1 = (f + bound) / bound - 1
= f / bound up to the rounding step (at most 1/255 of the range), which is I3D's flow input:
displacement over the clip bound, in [-1, 1]. The same map as the RGB one, x / 127.5 - 1.

Every function accepts a numpy array or a torch tensor, checks dtype and shape (a wrong input
raises `ValueError` saying what was expected), and returns a new contiguous CPU float32 tensor.
Frames need not be square: [T, H, W, C] works the same way.
"""
from __future__ import annotations

from typing import NamedTuple

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


# ----------------------------------------------------------------------------- clip models (torchvision video)
#
# Kinetics-400 clip models (torchvision `r2plus1d_18`, `s3d`): the constants are those of each
# model's torchvision weights preset, `<Weights>.KINETICS400_V1.transforms()` (a
# `VideoClassification`): bilinear resize without antialiasing (torchvision hard-codes
# antialias=False there to keep the published accuracy), centre crop, x/255, then the Kinetics
# mean and std below. tests/test_more_backbones.py compares these functions with the presets.

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class ClipGeometry(NamedTuple):
    """How frames become one Kinetics clip model's input."""
    short_side: int   # the frames' short side is resized to this (aspect ratio kept)
    crop: int         # then a centre crop crop x crop
    clip_len: int     # frames per clip; clips do not overlap (stride = clip_len)


# r2plus1d_18: preset resize (128, 171), i.e. short side 128 of a 4:3 Kinetics video, crop 112,
# 16-frame clips (the preset's clip_len=16). S3D: resize (256, 256), crop 224; its weights need at
# least 14 frames (meta min_temporal_size), 16 keeps the two clip models' rows aligned in time.
R2PLUS1D_CLIPS = ClipGeometry(128, 112, 16)
S3D_CLIPS = ClipGeometry(256, 224, 16)


def clip_indices(num_frames: int, clip_len: int) -> np.ndarray:
    """Frame indices `[ceil(T / clip_len), clip_len]` of non-overlapping clips (stride = clip_len);
    the last clip is completed by repeating the last frame, so every frame is seen exactly once
    and a video shorter than one clip still gives one clip."""
    if num_frames <= 0:
        raise ValueError("clip_indices: a video needs at least one frame")
    n = -(-num_frames // clip_len)
    return np.minimum(np.arange(n * clip_len), num_frames - 1).reshape(n, clip_len)


def _short_side_size(h: int, w: int, short: int, rounding=round) -> tuple[int, int]:
    """(H, W) with the short side `short` and the aspect ratio kept. Kinetics clips round the
    long side (a 240x320, 4:3 frame gives 128x171: exactly the r2plus1d preset's fixed (128, 171));
    CLIP truncates it (`int`), as CLIPImageProcessor does."""
    if h <= w:
        return short, int(rounding(w * short / h))
    return int(rounding(h * short / w)), short


def kinetics_clips(frames, geometry: ClipGeometry) -> torch.Tensor:
    """uint8 RGB frames [T, H, W, 3] -> float32 clips [n, 3, clip_len, crop, crop].

    The short side is resized to `geometry.short_side` keeping the aspect ratio. The torchvision
    presets resize to a fixed (H, W): (128, 171) for R(2+1)D is the short-side-128 size of the
    4:3 Kinetics videos it was trained on, and would stretch the frames stage's square frames by
    1.34 horizontally; keeping the aspect ratio gives the preset's exact result on 4:3 frames and
    an undistorted 128x128 on square ones (S3D's (256, 256) is the same either way on square
    frames). Frames of any size are resized (the demo's 112 px frames are enlarged), then
    centre-cropped, scaled to [0, 1] and normalised with the Kinetics mean and std; clips as in
    `clip_indices`."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    t = _as_tensor(frames, "kinetics_clips", (torch.uint8,), 4, 3).permute(0, 3, 1, 2)  # [T, 3, H, W]
    size = _short_side_size(int(t.shape[2]), int(t.shape[3]), geometry.short_side)
    if tuple(t.shape[2:]) != size:
        t = F.resize(t, list(size), interpolation=InterpolationMode.BILINEAR, antialias=False)
    t = F.center_crop(t, [geometry.crop, geometry.crop])
    x = t.float() / 255.0
    mean = torch.tensor(KINETICS_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(KINETICS_STD, dtype=torch.float32).view(1, 3, 1, 1)
    x = (x - mean) / std
    idx = torch.from_numpy(clip_indices(x.shape[0], geometry.clip_len))
    return x[idx].permute(0, 2, 1, 3, 4).contiguous()  # [n, L, 3, S, S] -> [n, 3, L, S, S]


def r2plus1d_clips(frames) -> torch.Tensor:
    """frames -> R(2+1)D-18 clips [n, 3, 16, 112, 112] (`kinetics_clips` with `R2PLUS1D_CLIPS`)."""
    return kinetics_clips(frames, R2PLUS1D_CLIPS)


def s3d_clips(frames) -> torch.Tensor:
    """frames -> S3D clips [n, 3, 16, 224, 224] (`kinetics_clips` with `S3D_CLIPS`)."""
    return kinetics_clips(frames, S3D_CLIPS)


# ----------------------------------------------------------------------------- CLIP image tower
#
# OpenAI CLIP ViT-B/32 (`openai/clip-vit-base-patch32`'s preprocessor_config.json, i.e.
# transformers' CLIPImageProcessor defaults): bicubic resize of the short side to 224, centre crop
# 224, x/255, normalised with OpenAI's CLIP mean and std.

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224


def clip_frames(frames) -> torch.Tensor:
    """uint8 RGB frames [T, H, W, 3] -> float32 [T, 3, 224, 224] for CLIP's image tower.

    Frames whose short side is not 224 (the demo's 112 px) are resized with PIL's bicubic filter,
    the resampling CLIPImageProcessor applies (resample=3), so the result is the processor's own;
    224 px frames go through unchanged."""
    from torchvision.transforms import functional as F

    t = _as_tensor(frames, "clip_frames", (torch.uint8,), 4, 3)
    size = _short_side_size(int(t.shape[1]), int(t.shape[2]), CLIP_SIZE, int)
    if tuple(t.shape[1:3]) != size:
        from PIL import Image

        t = torch.from_numpy(np.stack([np.asarray(Image.fromarray(f).resize(size[::-1], Image.BICUBIC))
                                       for f in t.numpy()]))
    t = F.center_crop(t.permute(0, 3, 1, 2), [CLIP_SIZE, CLIP_SIZE])
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((t.float() / 255.0 - mean) / std).contiguous()


# ----------------------------------------------------------------------------- speech models (waveform)
#
# wav2vec 2.0 base and HuBERT base take the raw 16 kHz waveform. The audio stage keeps each
# video's 16 kHz mono waveform (`extract.audio.load(work, id, kind="waveform")`); here it is cut
# into windows of 0.96 s (15,360 samples, hop 0.96 s: VGGish's example length, so the rows of the
# three audio feature sets cover the same stretches of time). The trailing partial window is
# dropped and audio shorter than one window is zero-padded to one, as the audio stage does for
# VGGish. `normalize`: Wav2Vec2FeatureExtractor's do_normalize, zero mean and unit variance over
# the kept samples ((x - mean) / sqrt(var + 1e-7)), padding left at 0. facebook/wav2vec2-base's
# preprocessor_config.json sets it; HuBERT base was pre-trained on unnormalised audio (fairseq's
# base recipe, normalize: false), so it is off there.

SPEECH_RATE = 16_000
SPEECH_WINDOW = 15_360  # 0.96 s at 16 kHz


def speech_windows(waveform, normalize: bool) -> torch.Tensor:
    """float 16 kHz mono waveform [n] -> float32 windows [N, 15360], N = max(1, n // 15360)."""
    t = _as_tensor(waveform, "speech_windows", (torch.float32, torch.float64, torch.float16), 1, None)
    t = t.to(torch.float32)
    n = max(1, t.shape[0] // SPEECH_WINDOW)
    kept = t[: n * SPEECH_WINDOW]
    if normalize and kept.numel():
        kept = (kept - kept.mean()) / torch.sqrt(kept.var(unbiased=False) + 1e-7)
    out = torch.zeros(n * SPEECH_WINDOW, dtype=torch.float32)
    out[: kept.shape[0]] = kept
    return out.view(n, SPEECH_WINDOW)


def wav2vec2_windows(waveform) -> torch.Tensor:
    """waveform -> wav2vec 2.0 base input windows (normalised, see `speech_windows`)."""
    return speech_windows(waveform, normalize=True)


def hubert_windows(waveform) -> torch.Tensor:
    """waveform -> HuBERT base input windows (not normalised, see `speech_windows`)."""
    return speech_windows(waveform, normalize=False)
