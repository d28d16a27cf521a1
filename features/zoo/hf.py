"""Hugging Face transformers backbones: `clip` (CLIP ViT-B/32 image tower on each frame), and
`wav2vec2` and `hubert` (base speech models on the 16 kHz waveform).

Not part of `make features`: extracted by name. `features.hf` builds the architectures from
transformers, says which activation is the feature and loads the published files strictly.
"""
from __future__ import annotations

import torch

from extract import audio as audio_stage
from extract import frames as frames_stage
from features import hf, inputs
from features.modalities import Modality, Network, StageSource, WeightFile
from features.zoo._common import audio_windows, generator, parameter_summary, tensor_of

# ----------------------------------------------------------------------------- weights files

CLIP_FILE = WeightFile("clip-vit-base-patch32.bin", hf.CLIP_URL,
                       "CLIP ViT-B/32 (OpenAI, openai/clip-vit-base-patch32; the image tower is used)",
                       hf.load_clip_vision, parameter_summary("CLIP ViT-B/32 image tower"), ("clip",))
WAV2VEC2_FILE = WeightFile("wav2vec2-base.bin", hf.WAV2VEC2_URL, "wav2vec 2.0 base (facebook/wav2vec2-base)",
                           hf.load_wav2vec2, parameter_summary("wav2vec 2.0 base"), ("wav2vec2",))
HUBERT_FILE = WeightFile("hubert-base-ls960.bin", hf.HUBERT_URL, "HuBERT base (facebook/hubert-base-ls960)",
                         hf.load_hubert, parameter_summary("HuBERT base"), ("hubert",))

# ----------------------------------------------------------------------------- networks


def _windows(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[0] > 0 and x.shape[1] == hf.WINDOW


CLIP = Network("CLIPVisionModelWithProjection", hf.CLIP_DIM, "rows", hf.clip_image_features, "[T, 3, 224, 224]",
               tensor_of(4, lambda x: tuple(x.shape[1:]) == (3, inputs.CLIP_SIZE, inputs.CLIP_SIZE)),
               build=hf.build_clip_vision, file=CLIP_FILE, own_init=True)
WAV2VEC2 = Network("Wav2Vec2Model", hf.SPEECH_DIM, "clips", hf.speech_window_features, "[N, 15360]", _windows,
                   build=hf.build_wav2vec2, file=WAV2VEC2_FILE, own_init=True)
HUBERT = Network("HubertModel", hf.SPEECH_DIM, "clips", hf.speech_window_features, "[N, 15360]", _windows,
                 build=hf.build_hubert, file=HUBERT_FILE, own_init=True)

# ----------------------------------------------------------------------------- prepare
# inputs.clip_frames: frames -> [T, 3, 224, 224], CLIP mean/std.
# inputs.wav2vec2_windows / inputs.hubert_windows: 16 kHz waveform -> 0.96 s windows [N, 15360].

# ----------------------------------------------------------------------------- example inputs


def clip_example(videos: int, frames: int, size: int, seed: int) -> list:
    """Normalised frames [frames, 3, 224, 224] (CLIP's own size: `size` does not apply)."""
    gen = generator(seed)
    return [torch.randn(frames, 3, inputs.CLIP_SIZE, inputs.CLIP_SIZE, generator=gen) for _ in range(videos)]


def speech_example(videos: int, frames: int, size: int, seed: int) -> list:
    """Waveform windows [N, 15360] of unit-variance noise (N from `frames`)."""
    gen = generator(seed)
    return [torch.randn(audio_windows(frames), hf.WINDOW, generator=gen) for _ in range(videos)]

# ----------------------------------------------------------------------------- entries


_WAVEFORM = StageSource(audio_stage, none_means="no audio stream", kind="waveform")
_SPEECH_CACHED = "`[N, 768]`, last hidden layer averaged per 0.96 s window"

clip = Modality(
    name="clip", summary="CLIP ViT-B/32 image tower on each frame", source=StageSource(frames_stage),
    prepare=inputs.clip_frames, network=CLIP, cached="`[T, 512]`, one row per frame, L2-normalised",
    batch={"cpu": 32, "cuda": 256}, videos_per_call={"cpu": 1, "cuda": 4},
    example=clip_example, label="CLIP", column="RGB", default=False)

wav2vec2 = Modality(
    name="wav2vec2", summary="wav2vec 2.0 base on the 16 kHz waveform", source=_WAVEFORM,
    prepare=inputs.wav2vec2_windows, network=WAV2VEC2, cached=_SPEECH_CACHED,
    batch={"cpu": 1, "cuda": 8}, videos_per_call={"cpu": 4, "cuda": 32},
    example=speech_example, label="wav2vec 2.0", column="Flow/Audio", default=False)

hubert = Modality(
    name="hubert", summary="HuBERT base on the 16 kHz waveform", source=_WAVEFORM,
    prepare=inputs.hubert_windows, network=HUBERT, cached=_SPEECH_CACHED,
    batch={"cpu": 1, "cuda": 8}, videos_per_call={"cpu": 4, "cuda": 32},
    example=speech_example, label="HuBERT", column="Flow/Audio", default=False)

MODALITIES = (clip, wav2vec2, hubert)
