"""Model bundles are data, `--out` never deletes what it did not write, predict never overwrites a
training work folder, and a random-weights bundle says so (docs/bundles.md)."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import pickle
import shutil

import numpy as np
import pytest

from classify import export as export_cli
from classify import predict as predict_cli
from classify import report
from classify.fuse import fuse
from extract import manifest as manifest_cli
from extract.manifest import write_manifest
from features.extract import extract_features
from tests.test_report import built  # noqa: F401 (the report tests' work folder with a table)
from tests.cli import quiet
from tests.workdirs import sample_with_frames_and_audio

MODALITIES = ["rgb", "audio"]


def _tree(folder):
    """Every file below `folder` with its bytes' digest: what must survive a refused command."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    manifest, work, videos = sample_with_frames_and_audio(root)
    data = manifest.parent
    for m in MODALITIES:
        extract_features(m, videos, work, weights="random", device="cpu", loaders=0)
    fuse(work, str(manifest), MODALITIES, "lstm", "weighted", 0)
    bundle = root / "model"
    code, out, err = quiet(export_cli.main, _export_args(manifest, work, bundle))
    assert code == 0, err
    return {"root": root, "data": data, "manifest": manifest, "videos": videos, "work": work, "bundle": bundle}


def _export_args(manifest, work, out, *extra):
    return ["--modalities", ",".join(MODALITIES), "--manifest", str(manifest), "--work", str(work),
            "--out", str(out), *extra]


def _new_manifest(trained, ids, path):
    by_id = {v.id: v for v in trained["videos"]}
    write_manifest(path, [dataclasses.replace(by_id[i], label="", split="") for i in ids])
    return path


def _predict(bundle, manifest, work):
    return quiet(predict_cli.main, ["--model", str(bundle), "--manifest", str(manifest), "--work", str(work),
                                    "--device", "cpu", "--loaders", "0", "--jobs", "1"])


def _reseal(folder):
    """Rewrite every hash a bundle holds, as someone editing it on purpose would."""
    path = folder / "bundle.json"
    bundle = json.loads(path.read_text())
    if isinstance(bundle.get("files"), dict):
        bundle["files"] = {rel: hashlib.sha256((folder / rel).read_bytes()).hexdigest()
                           for rel in bundle["files"] if (folder / rel).is_file()}
    path.write_text(json.dumps(bundle))
    if (folder / "bundle.sha256").exists():
        (folder / "bundle.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "  bundle.json\n")


def _copy(trained, tmp_path):
    other = tmp_path / "model"
    shutil.copytree(trained["bundle"], other)
    return other, json.loads((other / "bundle.json").read_text())


def _refused_before_work(trained, tmp_path, bundle, *fragments):
    """predict with `bundle` exits 2 with one line naming `fragments`, before any stage ran."""
    new = _new_manifest(trained, [trained["videos"][0].id], tmp_path / "one.csv")
    w = tmp_path / "w"
    code, out, err = _predict(bundle, new, w)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    for f in fragments:
        assert f in err, err
    assert not w.exists() or not any(w.rglob("*")), f"work done before the bundle was refused: {list(w.rglob('*'))}"
    return err


class _Payload:
    """A pickle that makes a folder when loaded: what a crafted bundle could run."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return os.mkdir, (self.target,)


# ------------------------------------------------------------------ bundles are data, checked whole
def test_a_pickled_payload_is_never_loaded(trained, tmp_path):
    other, bundle = _copy(trained, tmp_path)
    marker = tmp_path / "pwned"
    for m in MODALITIES:
        (other / bundle["features"][m]["head_file"]).write_bytes(pickle.dumps(_Payload(marker)))
    _reseal(other)
    _refused_before_work(trained, tmp_path, other, "rgb")
    assert not marker.exists(), "the bundle ran code"


def test_an_object_array_in_a_head_file_is_refused(trained, tmp_path):
    other, bundle = _copy(trained, tmp_path)
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.savez(buf, payload=np.array([_Payload(marker)], dtype=object))
    (other / bundle["features"]["audio"]["head_file"]).write_bytes(buf.getvalue())
    _reseal(other)
    _refused_before_work(trained, tmp_path, other, "audio")
    assert not marker.exists()


def test_a_head_file_outside_the_bundle_is_refused(trained, tmp_path):
    other, bundle = _copy(trained, tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "x").write_bytes(pickle.dumps(_Payload(marker)))
    bundle["features"]["rgb"]["head_file"] = "../x"
    (other / "bundle.json").write_text(json.dumps(bundle))
    _reseal(other)
    _refused_before_work(trained, tmp_path, other, "../x", "outside")
    assert not marker.exists()


def test_an_edited_bundle_json_is_refused(trained, tmp_path):
    other, bundle = _copy(trained, tmp_path)
    bundle["stages"]["frames"]["num_frames"] = 9
    (other / "bundle.json").write_text(json.dumps(bundle))
    _refused_before_work(trained, tmp_path, other, "bundle.json", "edited")


def test_a_truncated_head_is_refused_by_name(trained, tmp_path):
    other, bundle = _copy(trained, tmp_path)
    head = other / bundle["features"]["audio"]["head_file"]
    head.write_bytes(head.read_bytes()[: head.stat().st_size // 2])
    _refused_before_work(trained, tmp_path, other, head.name)


def test_a_truncated_bundle_json_is_refused_by_name(trained, tmp_path):
    other, _ = _copy(trained, tmp_path)
    text = (other / "bundle.json").read_bytes()
    (other / "bundle.json").write_bytes(text[: len(text) // 2])
    _refused_before_work(trained, tmp_path, other, "bundle.json")


def test_trimmed_class_names_are_refused(trained, tmp_path):
    other, bundle = _copy(trained, tmp_path)
    bundle["class_names"] = bundle["class_names"][:2]
    (other / "bundle.json").write_text(json.dumps(bundle))
    _reseal(other)
    _refused_before_work(trained, tmp_path, other, "2 class names")


def test_an_old_pickled_bundle_asks_for_a_new_export(trained, tmp_path):
    other, bundle = _copy(trained, tmp_path)
    bundle["format"] = 1
    (other / "bundle.json").write_text(json.dumps(bundle))
    (other / "bundle.sha256").unlink(missing_ok=True)
    err = _refused_before_work(trained, tmp_path, other, "export")
    assert "pickle" in err


def test_head_and_fusion_round_trip_without_pickle():
    from classify.fuse import Fusion, fit_fusion
    from classify.heads import head_from_state, head_state, make_head

    rng = np.random.default_rng(0)
    X, L, y = rng.normal(size=(60, 5, 8)).astype(np.float32), np.full(60, 5), rng.integers(0, 3, 60)
    for kind in ("lstm", "linear", "mlp"):
        head = make_head(kind).fit(X, L, y, n_classes=3)
        desc, arrays = head_state(head)
        again = head_from_state(json.loads(json.dumps(desc)), {k: np.array(v) for k, v in arrays.items()})
        assert all(np.asarray(a).dtype != object for a in arrays.values())
        np.testing.assert_array_equal(again.predict_proba(X, L), head.predict_proba(X, L))
    P = rng.dirichlet(np.ones(3), size=(2, 60))
    for rule in ("mean", "weighted", "stack"):
        fusion = fit_fusion(P, y, rule, ["a", "b"], 0, 3)
        desc, arrays = fusion.state()
        again = Fusion.from_state(json.loads(json.dumps(desc)), arrays)
        np.testing.assert_array_equal(again.apply(P), fusion.apply(P))


# ------------------------------------------------------------------ --out never deletes what it did not write
def test_export_out_refuses_a_folder_that_is_not_a_bundle(trained, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("four years")
    code, out, err = quiet(export_cli.main, _export_args(trained["manifest"], trained["work"], precious))
    assert code == 2 and str(precious) in err and len(err.strip().splitlines()) == 1, err
    assert (precious / "thesis.tex").read_text() == "four years"
    code, out, err = quiet(export_cli.main, _export_args(trained["manifest"], trained["work"], trained["bundle"]))
    assert code == 0, err  # a previous bundle is replaced


def test_export_out_never_replaces_work_folder_data(trained):
    work = trained["work"]
    before = _tree(work)
    for target in (work / "features", work, work / "frames", work / "runs" / "x"):
        for extra in ([], ["--force"]):
            code, out, err = quiet(export_cli.main, _export_args(trained["manifest"], work, target, *extra))
            assert code == 2 and "work folder" in err, (target, extra, err)
    assert _tree(work) == before


def test_report_out_never_replaces_a_work_folder(built, tmp_path):  # noqa: F811
    work = tmp_path / "w"
    shutil.copytree(built["work"], work)
    before = _tree(work)
    for target in (work, work / "features"):
        code, out, err = quiet(report.main, ["--manifest", str(built["manifest"]), "--work", str(work),
                                             "--out", str(target)])
        assert code == 2 and str(target) in err and "work folder" in err, err
    assert _tree(work) == before


def test_report_out_refuses_a_foreign_folder_and_dot(built, tmp_path, monkeypatch):  # noqa: F811
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("four years")
    args = ["--manifest", str(built["manifest"]), "--work", str(built["work"])]
    code, out, err = quiet(report.main, args + ["--out", str(precious)])
    assert code == 2 and str(precious) in err and (precious / "thesis.tex").is_file(), err
    monkeypatch.chdir(precious)
    code, out, err = quiet(report.main, args + ["--out", "."])
    assert code == 2 and "refusing" in err and (precious / "thesis.tex").is_file(), err
    code, out, err = quiet(report.main, args)  # the default W/report, a previous report: replaced
    assert code == 0, err
    again = tmp_path / "elsewhere"
    assert quiet(report.main, args + ["--out", str(again)])[0] == 0
    assert quiet(report.main, args + ["--out", str(again)])[0] == 0


# ------------------------------------------------------------------ predict never overwrites training data
def test_predict_refuses_a_training_work_folder(trained, tmp_path):
    clash = tmp_path / "new_video.mp4"
    first = trained["videos"][0]
    shutil.copy(trained["videos"][1].path, clash)
    new = tmp_path / "new.csv"
    write_manifest(new, [dataclasses.replace(first, path=str(clash), label="", split="")])
    before = _tree(trained["work"] / "features")
    code, out, err = _predict(trained["bundle"], new, trained["work"])
    assert code == 2 and str(trained["work"]) in err, err
    assert _tree(trained["work"] / "features") == before


def test_predict_refuses_an_id_made_from_another_file(trained, tmp_path):
    first, second = trained["videos"][0], trained["videos"][1]
    w = tmp_path / "w2"
    code, out, err = _predict(trained["bundle"], _new_manifest(trained, [first.id], tmp_path / "a.csv"), w)
    assert code in (0, 1), err
    clash = tmp_path / "b.csv"
    write_manifest(clash, [dataclasses.replace(second, id=first.id, label="", split="")])
    before = _tree(w)
    code, out, err = _predict(trained["bundle"], clash, w)
    assert code == 2 and first.id in err, err
    assert _tree(w) == before


# ------------------------------------------------------------------ unlabelled videos, random weights said
def test_unlabelled_folder_predicted_with_the_random_weights_said(trained, tmp_path):
    root = tmp_path / "incoming" / "deeper"
    root.mkdir(parents=True)
    for v in trained["videos"][:2]:
        shutil.copy(v.path, root / os.path.basename(v.path))
    m = tmp_path / "m.csv"
    code, out, err = quiet(manifest_cli.main, ["folder", str(tmp_path / "incoming"), "--unlabelled", "--out", str(m)])
    assert code == 0, err
    with open(m, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "path"] and len(rows) == 3
    code, out, err = _predict(trained["bundle"], m, tmp_path / "w")
    assert code == 0, err
    assert "RANDOM BACKBONE WEIGHTS" in out
    with open(tmp_path / "w" / "predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 2 and all(r["weights"] == "random" and r["predicted"] for r in preds)
