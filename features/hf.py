"""Backbones from `transformers`: CLIP ViT-B/32's image tower, wav2vec 2.0 base, HuBERT base.

The architectures are the library's own classes (`CLIPVisionModelWithProjection`,
`Wav2Vec2Model`, `HubertModel`) built from a config written out here: the values of the public
checkpoints' config.json files that shape the network (every other field is a training setting
that an eval-mode forward does not read). So the model can be built offline (tests and
`--weights random`, with the library's own seeded initialisation), and the published weights
are one file each in the weights folder, loaded strictly:

| file in the weights folder  | fetched from (users with network; `make weights NAMES=...`)                        |
|-----------------------------|-------------------------------------------------------------------------------------|
| `clip-vit-base-patch32.bin` | https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/pytorch_model.bin |
| `wav2vec2-base.bin`         | https://huggingface.co/facebook/wav2vec2-base/resolve/main/pytorch_model.bin       |
| `hubert-base-ls960.bin`     | https://huggingface.co/facebook/hubert-base-ls960/resolve/main/pytorch_model.bin   |

Loading (`load_hf_checkpoint`) brings the file's keys to the model's names, each rule explicit,
then goes through `features.checkpoints.load_strict` (every key and shape, no NaN or infinity):

* a wrapper's prefix is stripped when the file has it: `wav2vec2.` (facebook/wav2vec2-base is
  saved as `Wav2Vec2ForPreTraining`), `hubert.`;
* weight-norm tensors saved as `weight_g` / `weight_v` (older torch) are the
  `parametrizations.weight.original0` / `original1` of the model's parametrised convolution
  (and the other way round when an older transformers builds the model with `weight_g`);
* parts the feature extractor does not use are declared per file and dropped: the pre-training
  heads (`quantizer.`, `project_hid.`, `project_q.`), and CLIP's text tower (`text_model.`,
  `text_projection.`, `logit_scale`) when the image tower is loaded;
* `position_ids` buffers that older transformers saved are checked to be 0..n-1 and dropped
  (the model makes them itself); `masked_spec_embed` (SpecAugment's mask vector, used only in
  training) may be absent.

What is checked here, offline: the key layout against the models transformers builds from these
configs (the tests write files in the published layouts: the pre-training wrapper's prefix,
weight_g/weight_v, the text tower, position_ids). The real files were not downloaded on the
build machine: their SHA-256 is recorded in the feature cache but not compared with a published
value (no such value is pinned here; the torchvision files are, by their names).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .checkpoints import CheckpointError, load_strict, read_state_dict

CLIP_DIM = 512
SPEECH_DIM = 768
SPEECH_RATE = 16_000
WINDOW = 15_360            # 0.96 s at 16 kHz (features.inputs.SPEECH_WINDOW)
SEGMENT_WINDOWS = 16       # windows per forward pass of a long video: 15.36 s of context
FRAME_STRIDE = 320         # samples between two outputs of the convolutional front end (5 * 2**6)
FRAME_FIELD = 400          # samples each output sees (its receptive field)

CLIP_URL = "https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/pytorch_model.bin"
WAV2VEC2_URL = "https://huggingface.co/facebook/wav2vec2-base/resolve/main/pytorch_model.bin"
HUBERT_URL = "https://huggingface.co/facebook/hubert-base-ls960/resolve/main/pytorch_model.bin"

# openai/clip-vit-base-patch32 config.json, vision_config (and projection_dim)
CLIP_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                   projection_dim=512)
# facebook/wav2vec2-base config.json; facebook/hubert-base-ls960 has the same values, and a layer
# norm in its feature projection (feat_proj_layer_norm)
_SPEECH_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    hidden_act="gelu", layer_norm_eps=1e-5, feat_extract_norm="group", feat_extract_activation="gelu",
                    conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
                    conv_bias=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
                    do_stable_layer_norm=False, mask_time_prob=0.05)
WAV2VEC2_BASE = dict(_SPEECH_BASE)
HUBERT_BASE = dict(_SPEECH_BASE, feat_proj_layer_norm=True)

_WEIGHT_NORM_NAMES = ((".weight_g", ".parametrizations.weight.original0"),
                      (".weight_v", ".parametrizations.weight.original1"),
                      (".parametrizations.weight.original0", ".weight_g"),
                      (".parametrizations.weight.original1", ".weight_v"))
PRETRAINING_HEADS = ("quantizer.", "project_hid.", "project_q.", "final_proj.", "label_embs_concat")
CLIP_TEXT_TOWER = ("text_model.", "text_projection.", "logit_scale")


def build_clip_vision() -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VISION))


def build_wav2vec2() -> nn.Module:
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    return Wav2Vec2Model(Wav2Vec2Config(**WAV2VEC2_BASE))


def build_hubert() -> nn.Module:
    from transformers import HubertConfig, HubertModel

    return HubertModel(HubertConfig(**HUBERT_BASE))


def adapt_state(state: dict[str, torch.Tensor], model: nn.Module, path, prefixes: tuple[str, ...] = (),
                unused: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A published checkpoint's state dict renamed to `model`'s keys (see the module docstring)."""
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name.startswith(unused):
            continue
        if name.endswith("position_ids"):
            if not torch.equal(value.flatten().long(), torch.arange(value.numel())):
                raise CheckpointError(f"checkpoint {path}: {key} is not 0..{value.numel() - 1}")
            if name not in expected:
                continue
        if name not in expected:   # weight norm saved the other way than this torch/transformers builds it
            for old, new in _WEIGHT_NORM_NAMES:
                if name.endswith(old) and name[: -len(old)] + new in expected:
                    name = name[: -len(old)] + new
                    break
        if name in out:
            raise CheckpointError(f"checkpoint {path}: {key} and another key both name {name}")
        out[name] = value
    return out


def load_hf_checkpoint(model: nn.Module, path: str | os.PathLike, prefixes: tuple[str, ...] = (),
                       unused: tuple[str, ...] = ()) -> nn.Module:
    """Strictly load a published transformers checkpoint file into `model` (eval mode)."""
    state = adapt_state(read_state_dict(path), model, path, prefixes, unused)
    return load_strict(model, Path(path), optional_prefixes=("masked_spec_embed",), state=state).eval()


def load_clip_vision(path) -> nn.Module:
    """The image tower and its projection out of openai/clip-vit-base-patch32's CLIPModel file."""
    return load_hf_checkpoint(build_clip_vision(), path, unused=CLIP_TEXT_TOWER)


def load_wav2vec2(path) -> nn.Module:
    return load_hf_checkpoint(build_wav2vec2(), path, prefixes=("wav2vec2.",), unused=PRETRAINING_HEADS)


def load_hubert(path) -> nn.Module:
    return load_hf_checkpoint(build_hubert(), path, prefixes=("hubert.",), unused=PRETRAINING_HEADS)


def clip_image_features(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """[n, 3, 224, 224] (features.inputs.clip_frames) -> [n, 512]: the projected image embedding,
    L2-normalised (CLIP compares images and texts by cosine; this is `CLIPModel.get_image_features`
    divided by its norm)."""
    emb = model(pixel_values=pixels).image_embeds.float()
    return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def window_pooling(num_frames: int, num_windows: int) -> torch.Tensor:
    """[num_windows, num_frames] averaging matrix: each output frame of the convolutional front end
    goes to the 0.96 s window holding the centre of the samples it sees (frame j sees samples
    320 j .. 320 j + 399); a window's row averages its frames."""
    centres = torch.arange(num_frames) * FRAME_STRIDE + FRAME_FIELD // 2
    window = torch.clamp(centres // WINDOW, max=num_windows - 1)
    m = torch.zeros(num_windows, num_frames)
    m[window, torch.arange(num_frames)] = 1.0
    return m / m.sum(dim=1, keepdim=True).clamp_min(1.0)


def speech_window_features(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """[B, N, 15360] (features.inputs.wav2vec2_windows / hubert_windows) -> [B, N, 768]: the last
    hidden layer averaged per 0.96 s window.

    The windows of a video run through the model together, as one waveform (the transformer sees
    the whole of it, up to `SEGMENT_WINDOWS` windows = 15.36 s per pass; a longer video is cut into
    such segments, which bounds the attention's memory), with no attention mask, as the base
    models' feature extractors specify (return_attention_mask=False). Each video in the batch is
    independent of the others (group norm and attention are per example)."""
    b, n, _ = windows.shape
    out = []
    for s in range(0, n, SEGMENT_WINDOWS):
        seg = windows[:, s : s + SEGMENT_WINDOWS]
        k = seg.shape[1]
        hidden = model(seg.reshape(b, k * WINDOW)).last_hidden_state.float()   # [B, F, 768]
        pool = window_pooling(hidden.shape[1], k).to(hidden.device)
        out.append(torch.einsum("wf,bfd->bwd", pool, hidden))
    return torch.cat(out, dim=1)
