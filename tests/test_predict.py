"""A trained model applied to new videos: `classify.export` then `classify.predict`."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from classify import export as export_cli
from classify import predict as predict_cli
from classify.fuse import fuse
from extract import frames, stage
from extract.manifest import read_manifest, write_manifest
from features.extract import extract_features
from tests.cli import quiet
from tests.workdirs import sample_with_frames_and_audio

MODALITIES = ["rgb", "audio", "text"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    manifest, work, videos = sample_with_frames_and_audio(root)
    for m in MODALITIES:
        extract_features(m, videos, work, weights="random", device="cpu", loaders=0)
    fused = fuse(work, str(manifest), MODALITIES, "lstm", "weighted", 0)
    bundle = root / "model"
    code, out, err = quiet(export_cli.main, ["--modalities", ",".join(MODALITIES), "--manifest", str(manifest),
                                             "--work", str(work), "--out", str(bundle)])
    assert code == 0, err
    return {"root": root, "manifest": manifest, "videos": videos, "work": work, "fused": fused, "bundle": bundle}


def _new_manifest(trained, ids, name="new.csv"):
    """The chosen videos with label and split erased, as a user's unlabelled manifest."""
    by_id = {v.id: v for v in trained["videos"]}
    rows = [dataclasses.replace(by_id[i], label="", split="") for i in ids]
    path = trained["root"] / name
    write_manifest(path, rows)
    return path


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {r["id"]: r for r in csv.DictReader(f)}


def test_bundle_layout_and_card(trained):
    bundle = json.loads((trained["bundle"] / "bundle.json").read_text())
    assert bundle["modalities"] == MODALITIES and bundle["class_names"] == ["negative", "neutral", "positive"]
    assert bundle["stages"]["frames"]["num_frames"] == 8 and "audio" in bundle["stages"]
    assert bundle["features"]["rgb"]["cache"]["sha256"] == "random"
    assert bundle["features"]["text"]["cache"]["text_model"] == "all-MiniLM-L6-v2"
    for m in MODALITIES:
        assert (trained["bundle"] / "heads" / f"{m}.npz").is_file()
    card = json.loads((trained["bundle"] / "card.json").read_text())
    assert card["metrics"]["fused"]["accuracy"] == trained["fused"].metrics["joint"]["accuracy"]
    assert len(card["manifest_sha256"]) == 64 and "RANDOM" in card["random_weights"]
    md = (trained["bundle"] / "card.md").read_text()
    assert "Fusion weights" in md and "| fused |" in md
    # the sample's test split is small: the card says so, as the table and the report do
    assert "fewer than 30" in card["small_test_warning"] and "Warning: only" in md


def test_predict_reproduces_the_fused_test_predictions(trained):
    fused = trained["fused"]
    extra = ["neu_0001"]  # a video without audio, from the training split
    new = _new_manifest(trained, list(fused.test_ids) + extra)
    w2 = trained["root"] / "work2"
    code, out, err = quiet(predict_cli.main, ["--model", str(trained["bundle"]), "--manifest", str(new),
                                              "--work", str(w2), "--device", "cpu", "--loaders", "0", "--jobs", "2"])
    assert code == 0, err
    rows = _rows(w2 / "predictions.csv")
    classes = ["negative", "neutral", "positive"]
    for vid, proba in zip(fused.test_ids, fused.test_proba):
        got = np.array([float(rows[vid][f"p_{c}"]) for c in classes])
        np.testing.assert_allclose(got, proba, atol=2e-6)
        assert rows[vid]["predicted"] == classes[int(proba.argmax())]
    no_audio = rows["neu_0001"]
    assert no_audio["predicted"] and "audio" not in no_audio["modalities"].split("+")
    assert "audio: no audio stream" in no_audio["missing"] and no_audio["audio_predicted"] == ""
    captionless = [v.id for v in trained["videos"] if not v.text and v.id in rows]
    for vid in captionless:
        assert "text: no caption" in rows[vid]["missing"] and rows[vid]["predicted"]


def test_other_weights_or_settings_are_refused(trained, tmp_path):
    new = _new_manifest(trained, [trained["fused"].test_ids[0]], "one.csv")
    other = tmp_path / "model"
    import shutil

    shutil.copytree(trained["bundle"], other)
    bundle = json.loads((other / "bundle.json").read_text())
    bundle["features"]["text"]["cache"]["sha256"] = "0" * 64
    (other / "bundle.json").write_text(json.dumps(bundle))
    import hashlib  # resealed, as a deliberate edit would be: the checkpoint check must still catch it

    (other / "bundle.sha256").write_text(hashlib.sha256((other / "bundle.json").read_bytes()).hexdigest() + "\n")
    code, out, err = quiet(predict_cli.main, ["--model", str(other), "--manifest", str(new), "--work",
                                              str(tmp_path / "w"), "--device", "cpu", "--loaders", "0"])
    assert code == 2 and "text" in err and "sha256" in err and len(err.strip().splitlines()) == 1

    w = tmp_path / "w-other"  # a work folder whose frames were made at another size
    stage.run_stage(frames.STAGE, read_manifest(new, require_split=False, require_label=False), w,
                    frames.FrameSettings(num_frames=8, size=48), jobs=1)
    code, out, err = quiet(predict_cli.main, ["--model", str(trained["bundle"]), "--manifest", str(new), "--work",
                                              str(w), "--device", "cpu", "--loaders", "0"])
    assert code == 2 and "size: 48 there, 32 now" in err


def test_training_still_needs_labels(trained):
    new = _new_manifest(trained, [trained["fused"].test_ids[0]], "unlabelled.csv")
    with pytest.raises(ValueError, match="empty label"):
        read_manifest(new)
