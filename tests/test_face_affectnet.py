"""The optional `face_affectnet` modality: HSEmotion's AffectNet EfficientNet-B0 on face crops.

The published file cannot be downloaded here, so the tests make one in its layout: timm's
tf_efficientnet_b0 with its classifier replaced by a 10-output linear layer (as HSEmotion's
training code does), every value randomised, saved whole (`torch.save(model)`, the published
form) and as a state dict. Checked: both load strictly and give the same rows as the model
itself; a pickle naming anything outside the allow-list is refused in one line and nothing in it
runs; a wrong head or another EfficientNet-B0 variant is refused; the preprocessing is
HSEmotion's torchvision transform; `make weights` checks the git blob id; the modality reads
the faces stage's output (`W/faces/<key>.npz`, written here by `write_track` in the stage's
documented layout: crops, boxes, scores, found), caches one 1290-d row per frame with a face,
and a video without a face is missing, not zero-filled.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from extract import cli, manifest
from extract.layout import Work
from extract.manifest import Video
from features import affectnet, backbones, cache, checkpoints, modalities, weights
from features.checkpoints import CheckpointError
from features.extract import extract_features
from features.extract import main as features_main
from tests.backbone_helpers import one_torch_thread, randomized_state  # noqa: F401  (fixture)

pytest.importorskip("timm")

T, S = 5, 112   # frames per video, crop side (the faces stage's crops)


def published_model(seed: int = 0, outputs: int = affectnet.HEAD) -> nn.Module:
    """A model in the published file's layout, as HSEmotion's training code makes it."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("tf_efficientnet_b0", pretrained=False)
    model.classifier = nn.Linear(in_features=1280, out_features=outputs)
    model.load_state_dict(randomized_state(model, seed))
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same randomised model saved whole (published form) and as a state dict."""
    root = tmp_path_factory.mktemp("affectnet")
    model = published_model()
    torch.save(model, root / "whole.pt")
    torch.save(model.state_dict(), root / "state.pt")
    return model, root / "whole.pt", root / "state.pt"


def crops(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, S, S, 3), dtype=np.uint8)


def test_the_published_pickle_and_its_state_dict_load_strictly_and_agree(files):
    model, whole, state = files
    a, b = affectnet.load(whole), affectnet.load(state)
    for key, value in model.state_dict().items():
        assert torch.equal(a.state_dict()[key], value) and torch.equal(b.state_dict()[key], value), key
    x = affectnet.preprocess(crops(3, seed=1))
    with torch.inference_mode():
        ra, rb, out = affectnet.affect_rows(a, x), affectnet.affect_rows(b, x), model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert ra.shape == (3, affectnet.ROW_DIM) == (3, 8 + 2 + 1280)
    assert torch.equal(ra, rb)
    torch.testing.assert_close(ra[:, :8], torch.softmax(out[:, :8], 1))       # probabilities
    torch.testing.assert_close(ra[:, 8:10], out[:, 8:])                       # valence, arousal
    torch.testing.assert_close(ra[:, 10:], pooled)                            # the classifier's input
    torch.testing.assert_close(ra[:, :8].sum(1), torch.ones(3))


def test_reading_the_pickle_rebuilds_no_layer_class(files, monkeypatch):
    """The file's layers become inert stand-ins: no module class's unpickling code runs."""
    _, whole, _ = files

    def refuse(self, state):
        raise AssertionError(f"a real {type(self).__name__} was unpickled")

    monkeypatch.setattr(nn.Module, "__setstate__", refuse)
    state = affectnet.read_checkpoint(whole)
    assert state.keys() == published_model().state_dict().keys()
    assert all(type(v) in (torch.Tensor, nn.Parameter) for v in state.values())


class Pool(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))


def test_a_pickle_naming_anything_else_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"conv_stem.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as err:
        affectnet.load(tmp_path / "evil.pt")
    message = str(err.value)
    assert "\n" not in message and "system" in message and "refused" in message and "evil.pt" in message
    assert not marker.exists()

    model = published_model()
    model.global_pool = Pool()     # a layer class outside the allow-list inside an otherwise good model
    torch.save(model, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"refused: its pickle names .*Pool"):
        affectnet.load(tmp_path / "foreign.pt")


def test_a_wrong_head_or_another_variant_is_refused(tmp_path):
    seven = published_model(outputs=8)
    torch.save(seven, tmp_path / "head8.pt")
    torch.save(seven.state_dict(), tmp_path / "head8_state.pt")
    for name in ("head8.pt", "head8_state.pt"):
        with pytest.raises(CheckpointError, match=r"\(8, 1280\).*expected \(10, 1280\)"):
            affectnet.load(tmp_path / name)
    import timm

    other = timm.create_model("efficientnet_b0", pretrained=False, num_classes=affectnet.HEAD)  # same keys and shapes
    torch.save(other, tmp_path / "pytorch_variant.pt")
    with pytest.raises(CheckpointError, match=r"not tf_efficientnet_b0's layers: .*(eps|padding)"):
        affectnet.load(tmp_path / "pytorch_variant.pt")
    state = published_model().state_dict()
    state["blocks.0.0.conv_dw.weight"] = state["blocks.0.0.conv_dw.weight"] * float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="NaN"):
        affectnet.load(tmp_path / "nan.pt")


def test_every_layer_timm_builds_is_on_the_allow_list():
    built = {f"{type(m).__module__}.{type(m).__qualname__}" for m in affectnet.build().modules()}
    assert built <= set(affectnet.LAYER_CLASSES), built - set(affectnet.LAYER_CLASSES)


def test_preprocessing_is_hsemotions_transform():
    from PIL import Image
    from torchvision import transforms

    published = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                                    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    faces = crops(3, seed=2)
    expected = torch.stack([published(Image.fromarray(c)) for c in faces])
    torch.testing.assert_close(affectnet.preprocess(faces), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 RGB"):
        affectnet.preprocess(faces.astype(np.float32))


def test_make_weights_names_the_file_and_checks_its_git_blob(files, tmp_path):
    _, whole, _ = files
    done = subprocess.run(["git", "hash-object", str(whole)], capture_output=True, text=True, check=True)
    assert checkpoints.git_blob(whole) == done.stdout.strip()
    assert weights.resolve_names(["face_affectnet"]) == [affectnet.WEIGHT_FILE]
    assert affectnet.WEIGHT_FILE not in weights.resolve_names(None)
    assert "face_affectnet" not in modalities.names(default_only=True)
    assert affectnet.COMMIT in weights.URLS[affectnet.WEIGHT_FILE]
    target = tmp_path / affectnet.WEIGHT_FILE
    target.write_bytes(whole.read_bytes())
    with pytest.raises(CheckpointError, match=f"git blob id .* is not {affectnet.GIT_BLOB}"):
        weights.verify_file(affectnet.WEIGHT_FILE, target)          # not the published bytes
    assert "EfficientNet-B0" in weights.verify_file(affectnet.WEIGHT_FILE, target, check_hash=False)


# ----------------------------------------------------------------------------- the modality


def write_track(work, video_id: str, found: list[bool], seed: int) -> np.ndarray:
    """A faces stage output in the stage's layout (`extract.faces`: JPEG crops of the frames with a
    face); returns its crops as `extract.faces.load` reads them back."""
    import json

    from extract import faces as faces_stage

    n = len(found)
    flags = np.array(found, bool)
    data, offsets = faces_stage._encode(crops(n, seed), flags, 95)
    boxes = np.tile(np.array([10, 20, 90, 100], np.float32), (n, 1))
    path = Work(work).output("faces", video_id, ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, jpeg=data, offsets=offsets, boxes=boxes, scores=np.where(found, 0.99, 0).astype(np.float32),
             found=flags, crop_size=np.int64(crops(1, seed).shape[1]), meta=np.array(json.dumps({})))
    return faces_stage.load(work, video_id).crops


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    w = root / "work"
    found = {"smile/1 é": [True, False, True, True, False], "nobody": [False] * T,
             "v3": [False, True, False, False, True]}
    rows = [Video(id=vid, path=str(root / f"v{i}.mp4"), label="ab"[i % 2], split="train")
            for i, vid in enumerate(found)]
    m = manifest.write_manifest(root / "manifest.csv", rows)
    faces = {vid: write_track(w, vid, f, seed=i) for i, (vid, f) in enumerate(found.items())}
    return m, w, rows, found, faces


def _quiet(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = features_main(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_modality_caches_one_row_per_frame_with_a_face(work, files, tmp_path):
    m, w, rows, found, faces = work
    _, whole, _ = files
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / affectnet.WEIGHT_FILE).write_bytes(whole.read_bytes())
    summary = extract_features("face_affectnet", rows, w, weights=str(folder), device="cpu", loaders=0)
    assert summary["done"] == 2 and summary["missing"] == 1
    f = cache.load(w, "face_affectnet")
    assert f.x.shape[2] == affectnet.ROW_DIM == 1290
    assert cache.missing(w, "face_affectnet") == {"nobody": "no face"}
    attrs = cache.attributes(w, "face_affectnet")
    assert attrs["weights"] == "pretrained" and attrs["network"] == "EfficientNet" and attrs["stage"] == "faces"
    model = affectnet.load(folder / affectnet.WEIGHT_FILE)
    for vid in ("smile/1 é", "v3"):
        i = f.ids.index(vid)
        keep = np.array(found[vid])
        assert f.lengths[i] == keep.sum()
        with torch.inference_mode():
            expected = affectnet.affect_rows(model, affectnet.preprocess(faces[vid][keep])).numpy()
        np.testing.assert_allclose(f.x[i, :keep.sum()], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(f.x[i, :keep.sum(), :8].sum(1), 1.0, atol=1e-5)


def test_without_weights_it_is_refused_and_random_weights_are_loud(work, tmp_path):
    m, w, _, _, _ = work
    code, _, err = _quiet(["--modality", "face_affectnet", "--manifest", str(m), "--work", str(tmp_path / "w2"),
                           "--weights", str(tmp_path / "none"), "--loaders", "0"])
    assert code == cli.EXIT_USAGE and affectnet.WEIGHT_FILE in err and affectnet.URL in err
    assert "--weights random" in err
    work_random = tmp_path / "w3"
    shutil.copytree(w / "faces", work_random / "faces")
    code, out, err = _quiet(["--modality", "face_affectnet", "--manifest", str(m), "--work", str(work_random),
                             "--weights", "random", "--device", "cpu", "--loaders", "0"])
    assert code == 0, err
    assert "RANDOM BACKBONE WEIGHTS" in err.upper()
    assert cache.attributes(work_random, "face_affectnet")["weights"] == "random"
    bb = backbones.load_backbone("face_affectnet", weights="random", device="cpu")
    assert bb.dim == 1290 and type(bb.model).__name__ == "EfficientNet"
