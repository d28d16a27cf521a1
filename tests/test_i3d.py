"""I3D: published layout, strict loading, and equality with an independent functional I3D."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from features.checkpoints import CheckpointError
from features.i3d import InceptionI3d, same_padding

try:
    from backbone_helpers import one_torch_thread, randomized_state, read_listing, without_counters  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.backbone_helpers import one_torch_thread, randomized_state, read_listing, without_counters  # noqa: F401


@pytest.fixture(scope="module")
def rgb_files(tmp_path_factory):
    """A checkpoint in the published RGB layout with random values, saved as a new PyTorch
    release does, and as an old one did (no num_batches_tracked, pre-zip file format)."""
    folder = tmp_path_factory.mktemp("i3d")
    state = randomized_state(InceptionI3d(400, 3), seed=1)
    torch.save(state, folder / "rgb_new.pt")
    torch.save(without_counters(state), folder / "rgb_old.pt", _use_new_zipfile_serialization=False)
    return state, folder / "rgb_new.pt", folder / "rgb_old.pt"


# ---- layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels,listing", [(3, "i3d_rgb_keys.txt"), (2, "i3d_flow_keys.txt")])
def test_state_dict_is_the_published_layout(channels, listing):
    expected = read_listing(listing)
    state = InceptionI3d(400, channels).state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == expected


def test_same_padding_is_tensorflow_same():
    # total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0); front = total // 2
    assert same_padding(224, 7, 2) == (2, 3)
    assert same_padding(79, 7, 2) == (3, 3)
    assert same_padding(1, 7, 2) == (3, 3)
    assert same_padding(40, 3, 1) == (1, 1)
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(5, 2, 2) == (0, 1)
    assert same_padding(10, 2, 2) == (0, 0)
    assert same_padding(9, 1, 1) == (0, 0)


def test_head_pool_kernel_is_clamped_to_small_maps():
    assert InceptionI3d.pool_kernel((1, 1024, 10, 7, 7)) == (2, 7, 7)
    assert InceptionI3d.pool_kernel((1, 1024, 2, 4, 4)) == (2, 4, 4)
    assert InceptionI3d.pool_kernel((1, 1024, 1, 1, 1)) == (1, 1, 1)
    assert InceptionI3d.pool_kernel((1, 1024, 3, 9, 8)) == (2, 7, 7)


# ---- strict loading -------------------------------------------------------------------------
def test_loads_files_with_and_without_num_batches_tracked(rgb_files):
    state, new, old = rgb_files
    for path in (new, old):
        model = InceptionI3d.load_checkpoint(path)
        assert not model.training
        assert (model.num_classes, model.in_channels) == (400, 3)
        loaded = model.state_dict()
        for key, value in without_counters(state).items():
            assert torch.equal(loaded[key], value), key


def test_infers_flow_channels_and_class_count(tmp_path):
    path = tmp_path / "flow.pt"
    torch.save(without_counters(randomized_state(InceptionI3d(7, 2), seed=2)), path)
    model = InceptionI3d.load_checkpoint(path)
    assert (model.num_classes, model.in_channels) == (7, 2)
    with pytest.raises(CheckpointError, match=r"in_channels=2.*in_channels=3"):
        InceptionI3d.load_checkpoint(path, in_channels=3)
    with pytest.raises(CheckpointError, match=r"num_classes=7"):
        InceptionI3d.load_checkpoint(path, num_classes=400)


@pytest.mark.parametrize(
    "change,named",
    [
        ("missing", "Mixed_4c.b1b.bn.running_var"),
        ("unexpected", "Mixed_6a.b0.conv3d.weight"),
        ("mis-shaped", "Conv3d_2b_1x1.conv3d.weight"),
    ],
)
def test_layout_errors_name_the_file_and_key(rgb_files, tmp_path, change, named):
    state = dict(rgb_files[0])
    if change == "missing":
        del state[named]
    elif change == "unexpected":
        state[named] = torch.zeros(3)
    else:
        state[named] = torch.zeros(64, 64, 1, 1, 2)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        InceptionI3d.load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and named in message and f"1 {change} key" in message
    if change == "mis-shaped":
        assert "(64, 64, 1, 1, 2)" in message and "(64, 64, 1, 1, 1)" in message


def test_many_missing_keys_are_counted(rgb_files, tmp_path):
    state = {k: v for k, v in rgb_files[0].items() if not k.startswith("Mixed_5")}
    path = tmp_path / "cut.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"\d+ missing keys: .*more\)"):
        InceptionI3d.load_checkpoint(path)


def test_damaged_and_absent_files(rgb_files, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(rgb_files[1].read_bytes()[: 1 << 20])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    for path in (truncated, junk, tmp_path / "absent.pt"):
        with pytest.raises(CheckpointError, match=str(path).replace(".", r"\.")):
            InceptionI3d.load_checkpoint(path)


# ---- equality with an independent functional I3D --------------------------------------------
def _ref_pad(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    """TF SAME from the output size: out = ceil(n / s), total = max((out - 1) * s + k - n, 0)."""
    pads = []
    for n, k, s in zip(x.shape[2:][::-1], kernel[::-1], stride[::-1]):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def _ref_unit(x, sd, name, stride=(1, 1, 1), bn=True, relu=True):
    w = sd[f"{name}.conv3d.weight"]
    x = F.conv3d(_ref_pad(x, w.shape[2:], stride), w, sd.get(f"{name}.conv3d.bias"), stride=stride)
    if bn:
        x = F.batch_norm(x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"],
                         sd[f"{name}.bn.weight"], sd[f"{name}.bn.bias"], training=False, eps=1e-3)
    return F.relu(x) if relu else x


def _ref_maxpool(x, kernel, stride):
    # TF pooling ignores padded cells: pad with -inf (the model pads with zeros; equal after ReLU)
    return F.max_pool3d(_ref_pad(x, kernel, stride, value=-math.inf), kernel, stride)


def _ref_mixed(x, sd, name):
    b0 = _ref_unit(x, sd, f"{name}.b0")
    b1 = _ref_unit(_ref_unit(x, sd, f"{name}.b1a"), sd, f"{name}.b1b")
    b2 = _ref_unit(_ref_unit(x, sd, f"{name}.b2a"), sd, f"{name}.b2b")
    b3 = _ref_unit(_ref_maxpool(x, (3, 3, 3), (1, 1, 1)), sd, f"{name}.b3b")
    return torch.cat([b0, b1, b2, b3], 1)


def _ref_features(x, sd):
    x = _ref_unit(x, sd, "Conv3d_1a_7x7", stride=(2, 2, 2))
    x = _ref_maxpool(x, (1, 3, 3), (1, 2, 2))
    x = _ref_unit(x, sd, "Conv3d_2b_1x1")
    x = _ref_unit(x, sd, "Conv3d_2c_3x3")
    x = _ref_maxpool(x, (1, 3, 3), (1, 2, 2))
    x = _ref_mixed(_ref_mixed(x, sd, "Mixed_3b"), sd, "Mixed_3c")
    x = _ref_maxpool(x, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
        x = _ref_mixed(x, sd, name)
    x = _ref_maxpool(x, (2, 2, 2), (2, 2, 2))
    return _ref_mixed(_ref_mixed(x, sd, "Mixed_5b"), sd, "Mixed_5c")


def test_loaded_model_computes_the_published_network(rgb_files):
    state, _, old = rgb_files
    model = InceptionI3d.load_checkpoint(old)
    sd = torch.load(old, weights_only=True)
    # Odd sizes on purpose: asymmetric SAME padding in every dimension.
    x = torch.rand(2, 3, 9, 35, 29, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        got = model.extract_features(x)
        ref = _ref_features(x, sd)
        assert got.shape == (2, 1024, 2, 2, 1)
        assert ref.abs().max() > 1e-2  # the randomised network is not degenerate
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
        logits = model(x)
        pooled = F.avg_pool3d(ref, (2, 2, 1), stride=1)  # kernel (2, 7, 7) clamped to the 2x2x1 map
        ref_logits = F.conv3d(pooled, sd["logits.conv3d.weight"], sd["logits.conv3d.bias"]).mean((3, 4))
        assert logits.shape == (2, 400, 1)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4 * float(ref_logits.abs().max()))


# ---- shapes ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_model():
    torch.manual_seed(0)
    return InceptionI3d(400, 3).eval()


@pytest.mark.parametrize(
    "t,size,fmap,t_logits",
    [
        (1, 16, (1, 1, 1), 1),
        (1, 48, (1, 2, 2), 1),
        (4, 48, (1, 2, 2), 1),
        (8, 40, (1, 2, 2), 1),
        (16, 112, (2, 4, 4), 1),
        (17, 24, (3, 1, 1), 2),
    ],
)
def test_short_and_small_clips(plain_model, t, size, fmap, t_logits):
    x = torch.zeros(1, 3, t, size, size)
    with torch.inference_mode():
        f = plain_model.extract_features(x)
        y = plain_model(x)
    assert tuple(f.shape) == (1, 1024, *fmap)
    assert tuple(y.shape) == (1, 400, t_logits)
    assert torch.isfinite(y).all()


def test_79_frames_at_224_shapes_without_compute():
    # Shapes only, on the meta device (no arithmetic): the protocol clip gives Mixed_5c [B, 1024, 10, 7, 7].
    with torch.device("meta"):
        model = InceptionI3d(400, 3).eval()
        flow = InceptionI3d(400, 2).eval()
    x = torch.empty(2, 3, 79, 224, 224, device="meta")
    assert tuple(model.extract_features(x).shape) == (2, 1024, 10, 7, 7)
    assert tuple(model(x).shape) == (2, 400, 9)
    assert tuple(flow.extract_features(torch.empty(1, 2, 79, 224, 224, device="meta")).shape) == (1, 1024, 10, 7, 7)


def test_79_frames_at_224_for_real(plain_model):
    # The one full-size clip of the suite (batch 1; about 5 s on one core).
    with torch.inference_mode():
        f = plain_model.extract_features(torch.zeros(1, 3, 79, 224, 224))
    assert tuple(f.shape) == (1, 1024, 10, 7, 7)


def test_rejects_wrong_input(plain_model):
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        plain_model.extract_features(torch.zeros(1, 2, 4, 32, 32))
