"""`classify.fuse --rule early|tfn|xattn` through the command line, on real feature caches of a
generated dataset whose classes only the pairing of two modalities tells apart (colour x tone)
plus a third class either modality finds alone; late rules and single modalities stay near 2/3.
Also: reuse, cross-validation, the missing-modality counts, and the run's recorded settings."""
import json

import numpy as np
import pytest

from classify import fuse
from extract.manifest import Video, write_manifest
from features import cache
from tests.test_joint import pairing_task

CLASSES = ("pair_a", "pair_b", "third")  # sorted as the manifest reader orders classes
SIZES = {"train": 600, "val": 200, "test": 450}
NO_TONE_TEST = 90  # test videos (15 per case, so 30 of class 2) written without any tone: "no audio track"


def write_pairing_work(root, sizes=SIZES, no_tone=NO_TONE_TEST) -> tuple:
    """Caches `colour` and `tone` (through `cache.write_consolidated`, the feature stage's writer)
    and a manifest for `pairing_task` videos; returns (work, manifest, test ids without tone)."""
    feats, videos, lacking = {"colour": [], "tone": []}, [], []
    for s, (split, n) in enumerate(sizes.items()):
        X, y = pairing_task(n, 10 + s, missing_tone=0.1 if split != "test" else 0.0)
        if split == "test" and no_tone:
            Xn, yn = pairing_task(no_tone, 20, missing_tone=1.0)
            X = {m: (np.concatenate([X[m][0], Xn[m][0]]), np.concatenate([X[m][1], Xn[m][1]])) for m in X}
            y = np.concatenate([y, yn])
        for i in range(len(y)):
            vid = f"{split}{i:04d}"
            videos.append(Video(id=vid, path=f"videos/{vid}.mp4", label=CLASSES[y[i]], split=split))
            for m in feats:
                x, lengths = X[m]
                feats[m].append((vid, x[i, :lengths[i]]))
                if split == "test" and m == "tone" and lengths[i] == 0:
                    lacking.append(vid)
    manifest = write_manifest(root / "manifest.csv", videos)
    work = root / "work"
    for m, rows in feats.items():
        have = [(vid, x) for vid, x in rows if len(x)]
        missing = {vid: "no audio track" for vid, x in rows if not len(x)}
        dim = rows[0][1].shape[1] if len(rows[0][1]) else 6
        cache.write_consolidated(cache.cache_path(work, m), [v for v, _ in have], np.array([len(x) for _, x in have]),
                                 dim, (x for _, x in have), missing,
                                 {"backbone": f"generated-{m}", "weights": "pretrained", "synthetic": True})
    return work, manifest, lacking


@pytest.fixture(scope="module")
def pairing(tmp_path_factory):
    return write_pairing_work(tmp_path_factory.mktemp("pairing"))


def _fuse(work, manifest, rule, capsys, *extra):
    assert fuse.main(["--modalities", "colour,tone", "--rule", rule, "--work", str(work), "--manifest", str(manifest),
                      "--head", "linear", *extra]) == 0
    return capsys.readouterr().out


def _metrics(work, name):
    return json.loads((work / "runs" / name / "metrics.json").read_text())


@pytest.fixture(scope="module")
def late(pairing):
    """Every late rule on the same single runs (linear heads), scored through the CLI."""
    work, manifest, _ = pairing
    out = {}
    for rule in fuse.RULES:
        assert fuse.main(["--modalities", "colour,tone", "--rule", rule, "--work", str(work), "--manifest",
                          str(manifest), "--head", "linear"]) == 0
        out[rule] = _metrics(work, f"fuse-colour+tone-{rule}-linear")
    return out


def test_singles_and_late_rules_stay_near_two_thirds(late):
    for rule, m in late.items():
        assert 0.55 <= m["joint"]["accuracy"] <= 0.75, (rule, m["joint"]["accuracy"])
        for name, single in m["per_modality"].items():
            assert 0.55 <= single["accuracy"] <= 0.75, (rule, name, single)


@pytest.mark.parametrize("rule", ["early", "xattn"])
def test_joint_rules_learn_the_pairing(pairing, late, rule, capsys):
    work, manifest, lacking = pairing
    text = _fuse(work, manifest, rule, capsys)
    m = _metrics(work, f"fuse-colour+tone-{rule}")
    best_late = max(r["joint"]["accuracy"] for r in late.values())
    acc = m["joint"]["accuracy"]
    assert acc >= 0.85 and acc >= best_late + 0.15, (acc, best_late)
    assert m["joint"]["n"] == SIZES["test"] + NO_TONE_TEST
    # the missing-modality counts: printed on one line and stored
    assert f"test videos without: tone {len(lacking)}" in text
    assert m["test_missing"] == {"colour": 0, "tone": len(lacking)} and m["test_without_any"] == 0
    # the class either modality finds alone: its videos without a tone are classified from their colour
    with np.load(work / "runs" / f"fuse-colour+tone-{rule}" / "predictions.npz", allow_pickle=False) as p:
        ids, proba, y = p["test_ids"].tolist(), p["test_proba"], p["test_y"]
    where = {v: i for i, v in enumerate(ids)}
    green = [where[v] for v in lacking if y[where[v]] == 2]
    assert len(green) == NO_TONE_TEST // 3
    assert (proba[green].argmax(1) == 2).mean() >= 0.9
    # the same outputs as the late rules' runs, plus the recorded hyper-parameters
    assert set(m["per_modality"]) == {"colour", "tone"} and m["per_modality"]["tone"]["n"] == SIZES["test"]
    settings = json.loads((work / "runs" / f"fuse-colour+tone-{rule}" / "settings.json").read_text())
    assert settings["rule"] == rule and settings["params"]["weight_decay"] == m["joint"]["params"]["weight_decay"]
    assert {"dropout", "modality_dropout", "max_epochs", "patience"} <= set(settings["params"])


def test_tfn_runs_and_is_reused(pairing, capsys):
    work, manifest, _ = pairing
    _fuse(work, manifest, "tfn", capsys, "--set", "max_epochs=3")
    folder = work / "runs" / "fuse-colour+tone-tfn"
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    m = _metrics(work, "fuse-colour+tone-tfn")
    assert m["joint"]["params"]["max_epochs"] == 3 and m["joint"]["epochs"] <= 3
    assert (folder / "joint.npz").is_file() and not list(folder.glob("*.joblib"))
    _fuse(work, manifest, "tfn", capsys, "--set", "max_epochs=3")
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp  # reused, not trained again
    _fuse(work, manifest, "tfn", capsys, "--set", "max_epochs=2")  # other settings: trained again
    assert _metrics(work, "fuse-colour+tone-tfn")["joint"]["params"]["max_epochs"] == 2


def test_joint_rule_cross_validated_and_bad_settings(tmp_path, capsys):
    work, manifest, _ = write_pairing_work(tmp_path, {"train": 90, "val": 30, "test": 30}, no_tone=0)
    text = _fuse(work, manifest, "early", capsys, "--cv", "3", "--set", "max_epochs=2")
    assert "joint test accuracy over 3 folds" in text
    for k in range(3):
        assert (work / "runs" / f"fuse-colour+tone-early-cv3f{k}" / "predictions.npz").is_file()
    assert fuse.main(["--modalities", "colour,tone", "--rule", "early", "--work", str(work), "--manifest",
                      str(manifest), "--set", "widht=3"]) == 2
    assert "widht" in capsys.readouterr().err
    assert fuse.main(["--modalities", "colour,tone", "--rule", "mean", "--work", str(work), "--manifest",
                      str(manifest), "--set", "hidden=3"]) == 2
