"""VGGish and its PCA post-processing: published layout, strict loading, hand re-computation."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from features.checkpoints import CheckpointError
from features.vggish import VGGish, VGGishPCA, postprocess

try:
    from backbone_helpers import one_torch_thread, randomized_state, read_listing  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.backbone_helpers import one_torch_thread, randomized_state, read_listing  # noqa: F401


@pytest.fixture(scope="module")
def vggish_file(tmp_path_factory):
    state = randomized_state(VGGish(), seed=3)
    path = tmp_path_factory.mktemp("vggish") / "vggish-10086976.pth"
    torch.save(state, path)
    return state, path


def _pca_state(seed: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "pca_eigen_vectors": torch.randn(128, 128, generator=gen) * 0.3,
        "pca_means": torch.randn(128, 1, generator=gen),
    }


def test_layouts_are_the_published_ones():
    assert [(k, tuple(v.shape)) for k, v in VGGish().state_dict().items()] == read_listing("vggish_keys.txt")
    assert [(k, tuple(v.shape)) for k, v in VGGishPCA().state_dict().items()] == read_listing("vggish_pca_keys.txt")


def test_loaded_model_computes_the_published_network(vggish_file):
    state, path = vggish_file
    model = VGGish.load_checkpoint(path)
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    sd = state  # exactly what the file holds
    x = torch.randn(3, 1, 96, 64, generator=torch.Generator().manual_seed(5))

    # conv stack, layer by layer from the keys
    h = x
    for conv in (0, "pool", 3, "pool", 6, 8, "pool", 11, 13, "pool"):
        if conv == "pool":
            h = F.max_pool2d(h, 2)
        else:
            h = F.relu(F.conv2d(h, sd[f"features.{conv}.weight"], sd[f"features.{conv}.bias"], padding=1))
    fmap = h.numpy()
    assert fmap.shape == (3, 512, 6, 4)
    # TensorFlow (NHWC) flattening: index (t * 4 + f) * 512 + c holds channel c at time t, band f
    flat = np.empty((3, 12288), dtype=np.float32)
    for t in range(6):
        for f in range(4):
            flat[:, (t * 4 + f) * 512 : (t * 4 + f + 1) * 512] = fmap[:, :, t, f]
    emb = flat
    for i in (0, 2, 4):
        emb = np.maximum(emb @ sd[f"embeddings.{i}.weight"].numpy().T + sd[f"embeddings.{i}.bias"].numpy(), 0)

    with torch.inference_mode():
        got = model(x).numpy()
    assert got.shape == (3, 128) and (emb > 0).mean() > 0.2
    np.testing.assert_allclose(got, emb, rtol=1e-3, atol=1e-4 * np.abs(emb).max())
    # the flatten order matters: PyTorch's own (c, t, f) order gives another answer
    wrong = fmap.reshape(3, -1) @ sd["embeddings.0.weight"].numpy().T
    right = flat @ sd["embeddings.0.weight"].numpy().T
    assert np.abs(wrong - right).max() > 1e-2 * np.abs(right).max()


def test_pca_postprocessing_by_hand(tmp_path):
    path = tmp_path / "vggish_pca_params-970ea276.pth"
    torch.save(_pca_state(), path)
    pca = VGGishPCA.load_checkpoint(path)
    e = torch.load(path, weights_only=True)["pca_eigen_vectors"].double().numpy()
    mu = torch.load(path, weights_only=True)["pca_means"].double().numpy()[:, 0]
    x = np.abs(np.random.default_rng(6).normal(size=(20, 128)))
    expected = np.empty_like(x)
    for n in range(x.shape[0]):
        y = e @ (x[n] - mu)
        expected[n] = np.round((np.clip(y, -2.0, 2.0) + 2.0) * 255.0 / 4.0)
    with torch.inference_mode():
        got = pca(torch.from_numpy(x).float()).numpy()
        assert np.array_equal(got, postprocess(torch.from_numpy(x).float(), pca).numpy())
    assert got.dtype == np.float32 and got.min() == 0 and got.max() == 255  # clipping happened
    assert np.array_equal(got, np.round(got))
    diff = np.abs(got - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float32 vs float64 at .5 boundaries


def test_layout_errors_name_file_and_keys(vggish_file, tmp_path):
    state = dict(vggish_file[0])
    del state["features.13.bias"]
    state["embeddings.0.weight"] = torch.zeros(10, 12288)
    state["pca_means"] = torch.zeros(128, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        VGGish.load_checkpoint(path)
    message = str(info.value)
    for text in (str(path), "1 missing keys: features.13.bias", "1 unexpected keys: pca_means",
                 "embeddings.0.weight (file (10, 12288), model (4096, 12288))"):
        assert text in message


def test_pca_layout_errors(vggish_file, tmp_path):
    bad = _pca_state()
    bad["pca_means"] = bad["pca_means"][:, 0]
    path = tmp_path / "pca_bad.pth"
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match=r"pca_means \(file \(128,\), model \(128, 1\)\)"):
        VGGishPCA.load_checkpoint(path)
    # the network's file is not a PCA file (and vice versa)
    with pytest.raises(CheckpointError, match="missing keys: pca_eigen_vectors"):
        VGGishPCA.load_checkpoint(vggish_file[1])


def test_input_checks():
    with pytest.raises(ValueError, match=r"\[N, 1, 96, 64\]"):
        with torch.device("meta"):  # the check comes before any arithmetic
            VGGish()(torch.zeros(2, 96, 64))
    with pytest.raises(ValueError, match=r"\[N, 128\]"):
        VGGishPCA()(torch.zeros(128))


@pytest.mark.parametrize("numpy_module", [b"numpy._core.multiarray", b"numpy.core.multiarray"])
def test_pca_file_holding_numpy_arrays(tmp_path, numpy_module):
    # Converted parameter files may hold numpy arrays (pickled by numpy 2 or numpy 1); they load
    # with weights_only=True all the same, through an allowlist of numpy's data-only globals.
    e = np.random.default_rng(9).normal(size=(128, 128))
    buf = io.BytesIO()
    torch.save({"pca_eigen_vectors": e, "pca_means": np.ones((128, 1), np.float32)}, buf,
               _use_new_zipfile_serialization=False)
    raw = buf.getvalue().replace(b"numpy._core.multiarray\n_reconstruct", numpy_module + b"\n_reconstruct")
    path = tmp_path / "vggish_pca_params-970ea276.pth"
    path.write_bytes(raw)
    pca = VGGishPCA.load_checkpoint(path)
    assert torch.equal(pca.pca_eigen_vectors, torch.from_numpy(e).float())
    assert torch.equal(pca.pca_means, torch.ones(128, 1))
