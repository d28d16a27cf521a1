"""AffectNet face network: HSEmotion's EfficientNet-B0 with 8 emotions, valence and arousal.

Savchenko's HSEmotion models (the `hsemotion` and `emotiefflib` packages, Apache-2.0) are timm
EfficientNet-B0s pre-trained on VGGFace2 faces and trained on AffectNet. `enet_b0_8_va_mtl` is
the multi-task one: timm's `tf_efficientnet_b0` (TensorFlow "same" padding on the stride-2
convolutions, batch-norm epsilon 1e-3) with its classifier replaced by one linear layer of 10
outputs: the logits of the 8 AffectNet emotions in `EMOTIONS` order (the alphabetical folder
order of its training set), then valence and arousal (trained with a concordance loss, no
squashing). Input: an RGB face crop resized to 224x224, scaled to [0, 1], ImageNet mean and
std. Architecture from `timm` (the optional extra `affectnet`); nothing else of HSEmotion's.

    model = load(path)          # the published file or a state dict of it, strictly
    x = preprocess(crops)       # uint8 RGB crops [N, H, W, 3] -> [N, 3, 224, 224]
    rows = affect_rows(model, x)  # [N, 1290]: 8 probabilities, valence, arousal, 1280 pooled features

The published file is a whole pickled module (`torch.save(model)`, saved under timm 0.9.7),
which a plain `torch.load` would rebuild by importing and running whatever the pickle names.
It is read here with `torch.load(weights_only=True)` instead, with an explicit allow-list:
each name of `LAYER_CLASSES` (the layers of an EfficientNet-B0 under the module paths timm and
torch have used for them) resolves to an inert stand-in class defined here, never to the named
class, so no code of the file's choosing runs, timm's included; tensors come from torch's own
rebuild functions. Any other global (`os.system`, a timm class not on the list) stops the load
with one line. From the stand-ins the parameters and buffers are gathered under their module
paths (the state dict `model.state_dict()` would have given), and the hyper-parameters a state
dict does not show (strides, kernel sizes, groups, padding, batch-norm epsilon, which
convolutions pad dynamically) are compared with the model built here. Then the usual strict load
(`features.checkpoints`): every key and shape, no NaN. A plain state dict (`weights_only=True`
as well) is accepted too; it shows shapes only.

Why not ONNX: EmotiEffLib also publishes an ONNX export, but running it needs onnxruntime (a
large dependency for one optional model) and gives neither timm's architecture nor the pooled
features as a named layer; the pickle, read as data, gives both.

The file: `models/affectnet_emotions/enet_b0_8_va_mtl.pt` of github.com/av-savchenko/
face-emotion-recognition at commit 9f62dbb7 ("Changed models for new timm version (0.9.7)"),
fetched by `make weights NAMES=face_affectnet`. It was not downloadable on the build machine, so
no SHA-256 is pinned; the repository's tree records its git blob id (`GIT_BLOB`, the SHA-1 of
"blob <size>\\0" + the bytes, what `git hash-object` prints), which `make weights` checks.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoints import CheckpointError, load_strict

ARCH = "tf_efficientnet_b0"     # timm name; HSEmotion built it as 'tf_efficientnet_b0_ns' (same network)
EMOTIONS = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
HEAD = len(EMOTIONS) + 2        # 8 logits, valence, arousal
FEATURE_DIM = 1280              # the global average pool before the classifier
ROW_DIM = len(EMOTIONS) + 2 + FEATURE_DIM   # 1290: what each cached row holds
INPUT_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

WEIGHT_FILE = "enet_b0_8_va_mtl.pt"
COMMIT = "9f62dbb76f933a55fcebdb5fab9e76492c435187"
URL = (f"https://github.com/av-savchenko/face-emotion-recognition/raw/{COMMIT}/"
       f"models/affectnet_emotions/{WEIGHT_FILE}")
GIT_BLOB = "b7223bd1ab092a1b5a42bc04a5f4fbfe4d9f8b9b"

# The layers of EfficientNet-B0 by every module path the file may name them under: timm >= 0.8
# (`timm.layers`, `timm.models._efficientnet_blocks`) and the older `timm.models.layers`,
# `timm.models.efficientnet_blocks`; torch's own layers.
_TIMM_LAYERS = {"norm_act": ("BatchNormAct2d",), "conv2d_same": ("Conv2dSame",),
                "adaptive_avgmax_pool": ("SelectAdaptivePool2d",), "activations": ("Swish", "Sigmoid"),
                "linear": ("Linear",)}
_TIMM_BLOCKS = ("DepthwiseSeparableConv", "InvertedResidual", "SqueezeExcite")
_TORCH_LAYERS = {"conv": ("Conv2d",), "batchnorm": ("BatchNorm2d",), "activation": ("SiLU", "Sigmoid", "ReLU"),
                 "linear": ("Linear", "Identity"), "container": ("Sequential",), "pooling": ("AdaptiveAvgPool2d",),
                 "flatten": ("Flatten",), "dropout": ("Dropout",)}
LAYER_CLASSES = tuple(
    ["timm.models.efficientnet.EfficientNet"]
    + [f"{pkg}.{mod}.{cls}" for pkg in ("timm.layers", "timm.models.layers")
       for mod, classes in _TIMM_LAYERS.items() for cls in classes]
    + [f"{mod}.{cls}" for mod in ("timm.models._efficientnet_blocks", "timm.models.efficientnet_blocks")
       for cls in _TIMM_BLOCKS]
    + [f"torch.nn.modules.{mod}.{cls}" for mod, classes in _TORCH_LAYERS.items() for cls in classes])

# hyper-parameters a state dict does not show, compared between the file's layers and the model's
_COMPARED = ("kernel_size", "stride", "padding", "dilation", "groups", "eps")


class Layer:
    """Inert stand-in for one pickled layer: holds what the pickle stored, runs nothing.

    The unpickler creates it with `__new__` and fills `__dict__` with the stored attributes
    (`_parameters`, `_buffers`, `_modules`, `stride`, `eps`...); `published_as` is the class
    name the file gave."""
    published_as = ""


_STAND_INS = {name: type(name.rsplit(".", 1)[1], (Layer,), {"published_as": name}) for name in LAYER_CLASSES}


# ----------------------------------------------------------------------------- the network


def build() -> nn.Module:
    """timm's tf_efficientnet_b0 with the published 10-output head; timm's own initialisation
    (the `--weights random` model, seeded by the caller)."""
    import timm

    return timm.create_model(ARCH, pretrained=False, num_classes=HEAD)


def affect_rows(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[N, 3, 224, 224] -> [N, 1290]: softmax over the 8 emotion logits, valence, arousal, then
    the 1280-d pooled features the classifier reads."""
    features = model.forward_head(model.forward_features(x), pre_logits=True)
    out = model.get_classifier()(features)
    probs = torch.softmax(out[:, :len(EMOTIONS)].float(), dim=1)
    return torch.cat([probs, out[:, len(EMOTIONS):].float(), features.float()], dim=1)


def preprocess(crops) -> torch.Tensor:
    """uint8 RGB face crops [N, H, W, 3] -> float32 [N, 3, 224, 224], as HSEmotion prepares a
    face: PIL's bilinear resize to 224x224 (torchvision's `Resize` on a PIL image), x / 255,
    ImageNet mean and std."""
    from PIL import Image

    crops = np.asarray(crops)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
        raise ValueError(f"face crops: expected uint8 RGB [N, H, W, 3], got {crops.dtype} {tuple(crops.shape)}")
    size = (INPUT_SIZE, INPUT_SIZE)
    resized = np.stack([np.asarray(Image.fromarray(c).resize(size, Image.BILINEAR)) for c in crops]) \
        if len(crops) else np.zeros((0, *size, 3), np.uint8)
    x = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


# ----------------------------------------------------------------------------- reading the file


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _read(path: Path):
    """`torch.load(weights_only=True)` with the layer names resolved to stand-ins."""
    allowed = [(cls, name) for name, cls in _STAND_INS.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign global, a damaged zip, not a torch file ...
        named = re.search(r"GLOBAL (\S+)", str(exc))
        if named:
            raise CheckpointError(
                f"checkpoint {path}: refused: its pickle names {named.group(1)}, which is not a layer of "
                f"EfficientNet-B0 nor a tensor (nothing in the file was run)") from None
        raise CheckpointError(f"checkpoint {path}: cannot be read as a PyTorch file: {_one_line(exc)}") from None


def _gather(layer, prefix: str, state: dict, layers: dict, path: Path) -> None:
    """Parameters and buffers of a stand-in tree under their module paths, as `state_dict()`."""
    if not isinstance(layer, Layer):
        raise CheckpointError(f"checkpoint {path}: {prefix.rstrip('.') or 'the top level'} is a "
                              f"{type(layer).__name__}, not a layer")
    layers[prefix.rstrip(".")] = layer
    fields = vars(layer)
    skip = fields.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        table = fields.get(kind) or {}
        if not isinstance(table, Mapping):
            raise CheckpointError(f"checkpoint {path}: {prefix}{kind} is not a mapping")
        for name, value in table.items():
            if value is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"checkpoint {path}: {prefix}{name} is a {type(value).__name__}, not a tensor")
            state[prefix + name] = value.detach()
    children = fields.get("_modules") or {}
    if not isinstance(children, Mapping):
        raise CheckpointError(f"checkpoint {path}: {prefix}_modules is not a mapping")
    for name, child in children.items():
        if child is not None:
            _gather(child, f"{prefix}{name}.", state, layers, path)


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _compare_layers(layers: dict, model: nn.Module, path: Path) -> None:
    """The file's layer hyper-parameters against the model's (where both have the layer)."""
    modules = dict(model.named_modules())
    differ = []
    for name, layer in layers.items():
        mine = modules.get(name)
        if mine is None:
            continue
        fields = vars(layer)
        for attr in _COMPARED:
            if attr in fields and hasattr(mine, attr) and _plain(fields[attr]) != _plain(getattr(mine, attr)):
                differ.append(f"{name or 'model'}.{attr} {fields[attr]!r} (model {getattr(mine, attr)!r})")
        same_file = layer.published_as.endswith("Conv2dSame")
        if same_file != (type(mine).__name__ == "Conv2dSame"):
            differ.append(f"{name}: {'dynamic' if same_file else 'static'} same padding in the file")
    if differ:
        more = f", ... ({len(differ) - 3} more)" if len(differ) > 3 else ""
        raise CheckpointError(f"checkpoint {path}: not {ARCH}'s layers: {'; '.join(differ[:3])}{more}")


def read_checkpoint(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The state dict in the file at `path` (the published whole-module pickle or a state dict),
    read without running pickled code; a pickled module's layers are compared with `model`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    obj = _read(path)
    if isinstance(obj, Layer):
        if not obj.published_as.endswith(".EfficientNet"):
            raise CheckpointError(f"checkpoint {path}: holds a {obj.published_as}, not an EfficientNet")
        state: dict[str, torch.Tensor] = {}
        layers: dict = {}
        _gather(obj, "", state, layers, path)
        _compare_layers(layers, model if model is not None else build(), path)
        return state
    if isinstance(obj, Mapping):
        bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"checkpoint {path}: {len(bad)} entries are not tensors under string keys, "
                                  f"e.g. {', '.join(bad[:3])}")
        return dict(obj)
    raise CheckpointError(f"checkpoint {path}: holds a {type(obj).__name__}, not a model or a state dict")


def load(path: str | os.PathLike) -> nn.Module:
    """The published network from `path`, strictly, in eval mode (see the module docstring)."""
    model = build()
    state = read_checkpoint(path, model)
    head = state.get("classifier.weight")
    if head is not None and tuple(head.shape) != (HEAD, FEATURE_DIM):
        raise CheckpointError(f"checkpoint {path}: its head has {tuple(head.shape)} weights, expected "
                              f"({HEAD}, {FEATURE_DIM}): 8 emotions, valence and arousal (not {WEIGHT_FILE}?)")
    return load_strict(model, path, state=state).eval()


def summary(model: nn.Module) -> str:
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return f"EfficientNet-B0 (HSEmotion, AffectNet, 8 emotions + valence + arousal), {params:.1f} M parameters"
