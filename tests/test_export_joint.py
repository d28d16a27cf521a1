"""Joint rules in model bundles: `classify.export --rule early|tfn|xattn` stores the joint head as
arrays + JSON (no pickle), `classify.predict` applies it and reproduces the run's test
probabilities; a video lacking a modality is still predicted; a wrong array is one error line."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from classify import export as export_cli
from classify import predict as predict_cli
from classify.joint import JOINT_RULES, make_joint
from classify.joint_state import joint_from_state, joint_state
from classify.runs import read_json
from tests.test_joint import pairing_task
from tests.test_predict import MODALITIES, _new_manifest, _rows, quiet, trained  # noqa: F401 (fixture)

CLASSES = ["negative", "neutral", "positive"]


@pytest.mark.parametrize("rule", JOINT_RULES)
def test_state_round_trip_predicts_the_same(rule):
    (X, y), (Xv, yv) = pairing_task(120, 0, missing_tone=0.2), pairing_task(60, 1)
    head = make_joint(rule, seed=0, max_epochs=3).fit(X, y, Xv, yv)
    desc, arrays = joint_state(head)
    json.dumps(desc)  # plain JSON
    assert all(isinstance(a, np.ndarray) and not a.dtype.hasobject for a in arrays.values())
    again = joint_from_state(json.loads(json.dumps(desc)), {k: a.copy() for k, a in arrays.items()})
    Xt, _ = pairing_task(90, 2, missing_tone=0.3)
    np.testing.assert_array_equal(again.predict_proba(Xt), head.predict_proba(Xt))
    name = next(k for k in arrays if k.startswith("net."))
    bad = dict(arrays, **{name: np.zeros((3, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=rf"array {name} has shape \(3, 3, 3\)"):
        joint_from_state(desc, bad)
    renamed = {("net.renamed" if k == name else k): a for k, a in arrays.items()}
    with pytest.raises(ValueError, match=f"missing {name}"):
        joint_from_state(desc, renamed)


@pytest.fixture(scope="module")
def joint_bundle(trained):  # noqa: F811 (the fixture imported above)
    bundle = trained["root"] / "model-xattn"
    code, out, err = quiet(export_cli.main, ["--modalities", ",".join(MODALITIES), "--manifest", str(trained["manifest"]),
                                             "--work", str(trained["work"]), "--out", str(bundle), "--rule", "xattn"])
    assert code == 0, err
    assert "xattn joint head" in out
    return bundle


def test_joint_bundle_layout(trained, joint_bundle):  # noqa: F811
    bundle = json.loads((joint_bundle / "bundle.json").read_text())
    assert bundle["rule"] == "xattn" and bundle["joint"]["class"] == "CrossAttentionFusion"
    assert bundle["joint"]["modalities"] == MODALITIES and "fusion" not in bundle
    assert bundle["joint"]["params"]["weight_decay"] > 0 and "joint.npz" in bundle["files"]
    assert not (joint_bundle / "heads").exists() and not list(joint_bundle.rglob("*.joblib"))
    card = json.loads((joint_bundle / "card.json").read_text())
    run = read_json(trained["work"] / "runs" / f"fuse-{'+'.join(MODALITIES)}-xattn" / "metrics.json")
    assert card["metrics"]["fused"]["accuracy"] == run["joint"]["accuracy"]
    assert card["test_missing"] == run["test_missing"]
    assert "Joint head (xattn" in (joint_bundle / "card.md").read_text()


def test_predict_with_a_joint_bundle_reproduces_the_run(trained, joint_bundle):  # noqa: F811
    run = trained["work"] / "runs" / f"fuse-{'+'.join(MODALITIES)}-xattn"
    with np.load(run / "predictions.npz", allow_pickle=False) as p:
        test_ids, test_proba = p["test_ids"].tolist(), p["test_proba"]
    extra = ["neu_0001"]  # a video without audio, from the training split
    new = _new_manifest(trained, test_ids + extra, "joint.csv")
    w2 = trained["root"] / "work-joint"
    code, out, err = quiet(predict_cli.main, ["--model", str(joint_bundle), "--manifest", str(new), "--work", str(w2),
                                              "--device", "cpu", "--loaders", "0", "--jobs", "2"])
    assert code == 0, err
    rows = _rows(w2 / "predictions.csv")
    for vid, proba in zip(test_ids, test_proba):
        got = np.array([float(rows[vid][f"p_{c}"]) for c in CLASSES])
        np.testing.assert_allclose(got, proba, atol=2e-6)
        assert rows[vid]["predicted"] == CLASSES[int(proba.argmax())]
    no_audio = rows["neu_0001"]
    assert no_audio["predicted"] and "audio" not in no_audio["modalities"].split("+")
    assert "audio: no audio stream" in no_audio["missing"] and no_audio["audio_predicted"] == ""
    assert no_audio["rgb_predicted"] in CLASSES


def test_a_wrong_array_in_a_joint_bundle_is_one_line(trained, joint_bundle, tmp_path):  # noqa: F811
    other = tmp_path / "model"
    shutil.copytree(joint_bundle, other)
    with np.load(other / "joint.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    name = next(k for k in arrays if k.startswith("net."))
    arrays[name] = arrays[name][..., :1]
    np.savez(other / "joint.npz", **arrays)
    bundle = json.loads((other / "bundle.json").read_text())
    bundle["files"]["joint.npz"] = hashlib.sha256((other / "joint.npz").read_bytes()).hexdigest()
    (other / "bundle.json").write_text(json.dumps(bundle))  # resealed, as a deliberate edit would be
    (other / "bundle.sha256").write_text(hashlib.sha256((other / "bundle.json").read_bytes()).hexdigest() + "\n")
    new = _new_manifest(trained, ["neu_0001"], "one-joint.csv")
    code, out, err = quiet(predict_cli.main, ["--model", str(other), "--manifest", str(new), "--work",
                                              str(tmp_path / "w"), "--device", "cpu", "--loaders", "0"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "joint.npz" in err and f"array {name} has shape" in err
