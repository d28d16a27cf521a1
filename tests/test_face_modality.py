"""The `face` modality and `features.expressions` on a real smiling face, through the real faces
stage and the published weights (MTCNN and mini-XCEPTION, fetched once per session)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from extract import faces
from extract.manifest import Video, write_manifest
from features import cache, expression, expressions, modalities
from features.extract import extract_features
from features.zoo import face as face_zoo
from tests import facework
from tests import videos as tv


@pytest.fixture(scope="module")
def faced(tmp_path_factory, face_weights):
    """A smiling face video and a video without a face, the faces stage run on both."""
    root = tmp_path_factory.mktemp("faced")
    weights = face_weights
    rows = [Video(id="smile", path=str(facework.smiling_video(root / "smile.mp4")), label="a", split="train"),
            Video(id="empty", path=str(tv.make_video(root / "empty.mp4", seed=3)), label="b", split="train")]
    manifest = write_manifest(root / "manifest.csv", rows)
    summary = facework.run_faces(rows, root / "work", weights)
    assert summary.failed == 0
    return {"root": root, "weights": weights, "rows": rows, "manifest": manifest, "work": root / "work"}


def _own_copy(faced, tmp_path):
    """The faces stage's outputs in a work folder of this test's own."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(faced["work"] / "faces", work / "faces", copy_function=shutil.copy2)
    return work


def test_the_registry_entry():
    m = modalities.get("face")
    assert (m.label, m.column, m.in_all, m.default, m.network.dim) == ("Face", "RGB", True, False, 135)
    assert m.source.stages == ("faces",) and m.network.file.name == expression.WEIGHT_FILE
    assert "face" in m.network.file.aliases


@pytest.mark.parametrize("loaders", [0, 1])
def test_one_row_per_frame_with_a_face_probabilities_then_activations(faced, tmp_path, loaders):
    work = _own_copy(faced, tmp_path)
    track = faces.load(work, "smile")
    assert track.found.sum() >= 6, track.found
    s = extract_features("face", faced["rows"], work, weights=faced["weights"], device="cpu", loaders=loaders)
    assert (s["done"], s["missing"], s["failed"], s["weights"]) == (1, 1, 0, "pretrained")
    feats = cache.load(work, "face")
    assert feats.ids == ["smile"] and feats.lengths.tolist() == [int(track.found.sum())]
    assert cache.missing(work, "face") == {"empty": "no face"}
    rows = feats.x[0, :feats.lengths[0]]
    assert rows.shape[1] == 135
    model = expression.load_model(faced["weights"] / expression.WEIGHT_FILE)
    with torch.inference_mode():
        want_feats, want_probs = model.outputs(expression.preprocess(track.crops[track.found]))
    np.testing.assert_allclose(rows[:, :7], want_probs.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rows[:, 7:], want_feats.numpy(), rtol=1e-4, atol=1e-5)
    assert (rows[:, :7].argmax(1) == expression.EMOTIONS.index("happy")).mean() >= 0.8
    attrs = cache.attributes(work, "face")
    assert attrs["checkpoint"] == expression.WEIGHT_FILE and attrs["dim"] == 135
    assert cache.random_weights_banner(work, ["face"]) is None


def test_random_weights_are_seeded_and_say_so(faced, tmp_path):
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        work = _own_copy(faced, tmp_path / name)
        extract_features("face", faced["rows"], work, weights="random", seed=seed, device="cpu", loaders=0)
        runs.append(cache.load(work, "face").x)
    assert "RANDOM BACKBONE WEIGHTS for face (MiniXception)" in cache.random_weights_banner(work, ["face"])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])
    np.testing.assert_allclose(runs[0][0, :, :7].sum(axis=1), 1.0, rtol=1e-5)   # still probabilities


def test_prepare_takes_the_frames_with_a_face():
    crops = np.zeros((4, 112, 112, 3), np.uint8)
    crops[1] = 200
    track = faces.FaceTrack(crops, np.full((4, 4), np.nan, np.float32), np.zeros(4, np.float32),
                            np.array([False, True, True, False]))
    x = face_zoo.prepare(track)
    assert x.shape == (2, 1, 64, 64) and float(x[0].min()) > 0.5 and float(x[1].max()) == -1.0
    with pytest.raises(ValueError, match="without any face"):
        face_zoo.prepare(track._replace(found=np.zeros(4, bool)))


def test_expressions_csv_says_happy_for_the_smiling_face(faced, tmp_path, capsys):
    out = tmp_path / "expressions.csv"
    argv = ["--manifest", str(faced["manifest"]), "--work", str(faced["work"]), "--out", str(out),
            "--weights", str(faced["weights"])]
    assert expressions.main(argv) == 0, capsys.readouterr().err
    with open(out, newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert list(rows["smile"]) == list(expressions.COLUMNS)
    assert list(expressions.COLUMNS[2:9]) == [f"p_{c}" for c in ("angry", "disgust", "fear", "happy", "sad",
                                                                   "surprise", "neutral")]
    smile = rows["smile"]
    assert smile["top"] == "happy" and int(smile["frames_with_face"]) == int(faces.load(faced["work"], "smile").found.sum())
    assert sum(float(smile[f"p_{c}"]) for c in expression.EMOTIONS) == pytest.approx(1.0, abs=1e-4)
    assert rows["empty"]["frames_with_face"] == "0" and rows["empty"]["top"] == "" and rows["empty"]["p_happy"] == ""


def test_expressions_exit_codes(faced, tmp_path, capsys):
    rows = faced["rows"] + [Video(id="never", path=faced["rows"][0].path, label="a", split="train")]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "e.csv"
    base = ["--work", str(faced["work"]), "--out", str(out), "--weights", str(faced["weights"])]
    assert expressions.main(["--manifest", str(manifest), *base]) == 1
    err = capsys.readouterr().err
    assert "'never' has no usable faces output" in err and "Traceback" not in err
    assert expressions.main(["--manifest", str(manifest), "--work", str(tmp_path / "none"), "--out", str(out),
                             "--weights", str(faced["weights"])]) == 3
    capsys.readouterr()
    assert expressions.main(["--manifest", str(manifest), *base[:4], "--weights", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make weights NAMES=face" in err[0]


def test_dask_gives_the_local_cache(faced, tmp_path):
    """The face modality on a local Dask cluster: the same rows and missing reasons as in this process."""
    import os

    from tests.cli import cli_env

    local = _own_copy(faced, tmp_path / "local")
    extract_features("face", faced["rows"], local, weights=faced["weights"], device="cpu", loaders=0)
    remote = _own_copy(faced, tmp_path / "dask")
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = cli_env()["PYTHONPATH"]      # the workers import this checkout
    try:
        s = extract_features("face", faced["rows"], remote, weights=faced["weights"], device="cpu",
                             backend="dask", jobs=1, task_videos=1)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    assert (s["done"], s["missing"], s["failed"]) == (1, 1, 0)
    a, b = cache.load(local, "face"), cache.load(remote, "face")
    assert a.ids == b.ids and a.lengths.tolist() == b.lengths.tolist()
    np.testing.assert_allclose(a.x, b.x, rtol=1e-5, atol=1e-5)
    assert cache.missing(remote, "face") == {"empty": "no face"}
