"""Late fusion, run folders (train_run) and their metrics, on constructed and synthetic data."""
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from benchmarks.cache import synthetic_cache, write_synthetic_manifest
from classify import fuse as fuse_mod
from classify.fuse import choose_weights, combine, fuse_runs, stack
from classify.heads import LSTMHead
from classify.metrics import classification_metrics
from classify.data import Labels
from classify.train import RunResult, train_run
from features import cache

NAMES = ["a", "b", "c"]


# ----------------------------------------------------------------------------- constructed runs


def partial_knowledge(y, known, rng):
    """Confident and right on the classes in `known`, an uninformative guess on the others."""
    P = np.empty((len(y), 3))
    for i, c in enumerate(y):
        if c in known:
            conf = rng.uniform(0.55, 0.85)
            P[i] = (1 - conf) / 2
            P[i, c] = conf
        else:
            P[i] = rng.dirichlet(np.full(3, 5.0))
    return P


def make_labels(n_val, n_test, seed=0, test_labels=None):
    rng = np.random.default_rng(seed)
    y_val = rng.integers(0, 3, n_val)
    y_test = rng.integers(0, 3, n_test) if test_labels is None else np.asarray(test_labels)
    ids = [f"v{i:04d}" for i in range(n_val + n_test)]
    ys = np.concatenate([y_val, y_test])
    split = {i: ("val" if j < n_val else "test") for j, i in enumerate(ids)}
    return Labels(NAMES, {i: int(c) for i, c in zip(ids, ys)}, split, f"digest{seed}"), y_val, y_test


def fake_run(labels, P_by_id, name):
    """A RunResult over the ids in P_by_id (ids absent from it: the video lacks this modality)."""
    def part(split):
        ids = [i for i in labels.ids(split) if i in P_by_id]
        return ids, np.array([P_by_id[i] for i in ids]).reshape(len(ids), 3)

    val_ids, val_p = part("val")
    test_ids, test_p = part("test")
    y_test = [labels.label[i] for i in test_ids]
    m = classification_metrics(y_test, test_p.argmax(1), NAMES)
    return RunResult(f"/nowhere/{name}", m, NAMES, val_ids, val_p, test_ids, test_p, False)


@pytest.fixture(scope="module")
def two_halves():
    """Modality A knows classes 0 and 1, modality B classes 1 and 2."""
    labels, y_val, y_test = make_labels(240, 240)
    rng = np.random.default_rng(1)
    ids = labels.ids("val") + labels.ids("test")
    y = np.array([labels.label[i] for i in ids])
    A = dict(zip(ids, partial_knowledge(y, {0, 1}, rng)))
    B = dict(zip(ids, partial_knowledge(y, {1, 2}, rng)))
    return labels, A, B


@pytest.fixture(scope="module")
def fused_halves(two_halves):
    """fuse_runs of the two modalities under each rule (stacking is the slow one: fit it once)."""
    labels, A, B = two_halves
    runs = {"A": fake_run(labels, A, "A"), "B": fake_run(labels, B, "B")}
    return runs, {rule: fuse_runs(runs, labels, rule, seed=0)[:3] for rule in ("mean", "weighted", "stack")}


@pytest.mark.parametrize("rule", ["mean", "weighted", "stack"])
def test_fusion_beats_every_modality_when_each_knows_part(two_halves, fused_halves, rule):
    labels, _, _ = two_halves
    result, test_ids, joint = fused_halves[1][rule]
    singles = [result["per_modality"][m]["accuracy"] for m in "AB"]
    assert all(0.65 < s < 0.9 for s in singles), singles  # each alone: 2/3 right plus lucky guesses
    assert result["joint"]["accuracy"] > max(singles) + 0.08, (rule, singles, result["joint"]["accuracy"])
    assert result["joint"]["n"] == 240 and test_ids == labels.ids("test")
    np.testing.assert_allclose(joint.sum(axis=1), 1, atol=1e-9)
    assert sum(result["joint"]["weights"].values()) == pytest.approx(1, abs=1e-3)


def test_weighted_fusion_gives_a_noise_modality_little_weight(two_halves):
    labels, A, B = two_halves
    rng = np.random.default_rng(9)
    noise = {i: rng.dirichlet(np.ones(3)) for i in A}
    runs = {"A": fake_run(labels, A, "A"), "noise": fake_run(labels, noise, "noise"), "B": fake_run(labels, B, "B")}
    w = fuse_runs(runs, labels, "weighted")[0]["joint"]["weights"]
    assert w["noise"] < min(w["A"], w["B"]), w


@pytest.mark.parametrize("rule", ["mean", "weighted", "stack"])
def test_test_split_chooses_nothing(two_halves, fused_halves, rule):
    labels, _, _ = two_halves
    runs = fused_halves[0]
    first, ids1, joint1 = fused_halves[1][rule]
    # other test labels: only the test score may change
    y_test = np.array([labels.label[i] for i in labels.ids("test")])
    relabelled, _, _ = make_labels(240, 240, test_labels=(y_test + 1) % 3)
    second, ids2, joint2, _ = fuse_runs(runs, relabelled, rule, seed=0)
    assert second["joint"]["weights"] == first["joint"]["weights"]
    assert second["joint"]["val_accuracy"] == first["joint"]["val_accuracy"]
    assert ids1 == ids2
    np.testing.assert_array_equal(joint2, joint1)  # same model: same coefficients
    assert second["joint"]["accuracy"] != first["joint"]["accuracy"]


def test_test_probabilities_choose_nothing(two_halves):
    labels, A, B = two_halves
    y_val = np.array([labels.label[i] for i in labels.ids("val")])
    P_val = np.stack([np.array([A[i] for i in labels.ids("val")]), np.array([B[i] for i in labels.ids("val")])])
    P_test = np.stack([np.array([A[i] for i in labels.ids("test")]), np.array([B[i] for i in labels.ids("test")])])
    w, acc = choose_weights(P_val, y_val)
    assert w.sum() == pytest.approx(1) and 0 <= acc <= 1
    half = slice(0, 120)  # stacking fits 50 models: keep it small
    p1, share1, val1 = stack(P_val[:, half], y_val[half], P_test, 0, 3)
    p2, share2, val2 = stack(P_val[:, half], y_val[half], P_test[:, ::-1], 0, 3)
    np.testing.assert_array_equal(share1, share2)
    assert val1 == val2
    np.testing.assert_allclose(p2, p1[::-1], atol=1e-12)  # each test video scored on its own


def test_missing_modality_fused_over_what_each_video_has(two_halves):
    labels, A, B = two_halves
    rng = np.random.default_rng(3)
    C = dict(zip(A, partial_knowledge(np.array([labels.label[i] for i in A]), {0, 2}, rng)))
    without = set(labels.ids("val")[:25] + labels.ids("test")[:40])
    C = {i: p for i, p in C.items() if i not in without}
    runs = {"A": fake_run(labels, A, "A"), "B": fake_run(labels, B, "B"), "audio": fake_run(labels, C, "audio")}
    result, test_ids, joint, _ = fuse_runs(runs, labels, "weighted")
    assert result["per_modality"]["audio"]["n"] == 200
    assert result["per_modality"]["A"]["n"] == result["joint"]["n"] == len(test_ids) == 240
    w = result["joint"]["weights"]
    for j, vid in enumerate(test_ids):
        have = {"A": A[vid], "B": B[vid]} | ({"audio": C[vid]} if vid in C else {})
        total = sum(w[m] for m in have)
        if total == 0:
            expected = np.mean(list(have.values()), axis=0)
        else:
            expected = sum(w[m] * p for m, p in have.items()) / total
        np.testing.assert_allclose(joint[j], expected, atol=1e-3)  # weights are rounded to 4 places


def test_combine_renormalises_and_falls_back_to_the_mean():
    p = np.array([[0.6, 0.3, 0.1]])
    q = np.array([[0.1, 0.2, 0.7]])
    r = np.array([[0.2, 0.5, 0.3]])
    nan = np.full((1, 3), np.nan)
    P = np.stack([np.concatenate([p, p, p]), np.concatenate([q, q, nan]), np.concatenate([r, nan, nan])])
    out = combine(P, np.array([0.5, 0.3, 0.2]))
    np.testing.assert_allclose(out[0], 0.5 * p[0] + 0.3 * q[0] + 0.2 * r[0])
    np.testing.assert_allclose(out[1], (0.5 * p[0] + 0.3 * q[0]) / 0.8)
    np.testing.assert_allclose(out[2], p[0])
    zero_first = combine(P[:, 1:], np.array([0.0, 0.0, 1.0]))  # r is absent: plain mean of p and q
    np.testing.assert_allclose(zero_first[0], (p[0] + q[0]) / 2)
    batch = combine(P, np.array([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]]))
    assert batch.shape == (2, 3, 3)
    np.testing.assert_allclose(batch[1], np.concatenate([p, p, p]))


def test_fuse_rejects_bad_rules_and_modalities(two_halves, tmp_path):
    labels, A, B = two_halves
    with pytest.raises(ValueError, match="unknown rule"):
        fuse_runs({"A": fake_run(labels, A, "A")}, labels, "max")
    with pytest.raises(ValueError, match="distinct"):
        fuse_mod.fuse(tmp_path, labels, ["rgb", "rgb"])


# ----------------------------------------------------------------------------- metrics


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    names = ["n", "p", "q", "never"]
    y_true = rng.integers(0, 3, 200)  # class 3 never occurs in y_true ...
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, 200))  # ... but is predicted
    m = classification_metrics(y_true, y_pred, names)
    check_against_sklearn(m, y_true, y_pred, names)
    assert m["per_class_recall"]["never"] is None


def check_against_sklearn(m, y_true, y_pred, names):
    import warnings

    k = len(names)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted classes absent from y_true
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    present = np.unique(y_true)
    recall = skm.recall_score(y_true, y_pred, labels=present, average=None)
    assert [m["per_class_recall"][names[c]] for c in present] == pytest.approx(list(recall))
    assert m["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist()
    assert m["class_names"] == list(names) and m["n"] == len(y_true)


# ----------------------------------------------------------------------------- runs on a synthetic cache

N_VIDEOS = 150


def synthetic_work(root, modalities=("rgb",)):
    synthetic_cache(root, N_VIDEOS, modalities, signal=True, seed=0)
    return root, write_synthetic_manifest(root / "manifest.csv", N_VIDEOS)


@pytest.fixture(scope="module")
def rgb_work(tmp_path_factory):
    return synthetic_work(tmp_path_factory.mktemp("rgb"))


def test_same_seed_same_run_in_another_folder(rgb_work, tmp_path):
    work, manifest = rgb_work
    other, other_manifest = synthetic_work(tmp_path / "other")
    a = train_run(work, manifest, "rgb", "lstm", seed=0)
    b = train_run(other, other_manifest, "rgb", "lstm", seed=0)
    assert not b.reused
    np.testing.assert_array_equal(a.val_proba, b.val_proba)
    np.testing.assert_array_equal(a.test_proba, b.test_proba)
    assert a.test_ids == b.test_ids
    c = train_run(other, other_manifest, "rgb", "lstm", seed=1)
    assert not np.array_equal(a.test_proba, c.test_proba)


def test_runs_are_reused_unless_something_changed(tmp_path, monkeypatch):
    work, manifest = synthetic_work(tmp_path)
    first = train_run(work, manifest, "rgb", "lstm", seed=0)
    assert not first.reused
    model = first.path / "model.joblib"
    stamp = model.stat().st_mtime_ns
    fits = []
    real_fit = LSTMHead.fit
    monkeypatch.setattr(LSTMHead, "fit", lambda self, *a, **k: fits.append(self.get_params()) or real_fit(self, *a, **k))

    again = train_run(work, manifest, "rgb", "lstm", seed=0)
    assert again.reused and fits == []
    assert model.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.test_proba, first.test_proba)
    assert again.metrics == first.metrics

    changed = train_run(work, manifest, "rgb", "lstm", seed=0, params={"hidden": 8})
    assert not changed.reused and len(fits) == 1 and fits[0]["hidden"] == 8
    assert train_run(work, manifest, "rgb", "lstm", seed=0, params={"hidden": 8}).reused and len(fits) == 1

    forced = train_run(work, manifest, "rgb", "lstm", seed=0, params={"hidden": 8}, force=True)
    assert not forced.reused and len(fits) == 2

    # another label for one training video: the manifest digest changes, so the run is retrained
    text = manifest.read_text().splitlines()
    row = next(j for j, line in enumerate(text) if ",train" in line and ",negative," in line)
    text[row] = text[row].replace(",negative,", ",positive,")
    manifest.write_text("\n".join(text) + "\n")
    assert not train_run(work, manifest, "rgb", "lstm", seed=0, params={"hidden": 8}).reused and len(fits) == 3


def test_metrics_json_agrees_with_sklearn(rgb_work):
    work, manifest = rgb_work
    run = train_run(work, manifest, "rgb", "lstm", seed=0)
    m = json.loads((run.path / "metrics.json").read_text())
    with np.load(run.path / "predictions.npz") as p:
        test_y, test_pred = p["test_y"], p["test_proba"].argmax(1)
        val_y, val_pred = p["val_y"], p["val_proba"].argmax(1)
        assert p["test_ids"].tolist() == run.test_ids
    names = ["negative", "neutral", "positive"]
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "per_class_recall", "confusion_matrix"):
        assert key in m and key in m["val"]
    check_against_sklearn(m, test_y, test_pred, names)
    check_against_sklearn(m["val"], val_y, val_pred, names)
    assert m["n"] == N_VIDEOS // 5
    settings = json.loads((run.path / "settings.json").read_text())
    # every hyperparameter but `verbose`, which changes what is printed, not what is trained
    params = LSTMHead(seed=0).get_params()
    assert params.pop("verbose") is False and settings["params"] == params and settings["modality"] == "rgb"


def test_fuse_cli_trains_missing_runs_and_writes_documented_metrics(tmp_path, capsys):
    work, manifest = synthetic_work(tmp_path, ("rgb", "flow", "audio"))
    without_audio = set(cache.missing(work, "audio"))
    labels = Labels.from_manifest(manifest)
    test_without = [i for i in labels.ids("test") if i in without_audio]
    assert without_audio and test_without, "the synthetic cache should lack audio for some test videos"
    assert not (work / "runs").exists()

    assert fuse_mod.main(["--modalities", "rgb,flow,audio", "--work", str(work), "--manifest", str(manifest)]) == 0
    assert "joint" in capsys.readouterr().out
    for m in ("rgb", "flow", "audio"):
        assert (work / "runs" / f"{m}-lstm-seed0" / "metrics.json").is_file()
    out = work / "runs" / "fuse-rgb+flow+audio-weighted"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_modality"]) == {"rgb", "flow", "audio"}
    n_test = len(labels.ids("test"))
    for m, pm in metrics["per_modality"].items():
        run = json.loads((work / "runs" / f"{m}-lstm-seed0" / "metrics.json").read_text())
        assert pm["accuracy"] == run["accuracy"] and pm["macro_f1"] == run["macro_f1"]
        assert pm["n"] == (n_test - len(test_without) if m == "audio" else n_test)
    audio_run = json.loads((work / "runs" / "audio-lstm-seed0" / "metrics.json").read_text())
    assert audio_run["counts"]["test"] == {"with_features": n_test - len(test_without), "without": len(test_without)}
    joint = metrics["joint"]
    assert set(joint["weights"]) == {"rgb", "flow", "audio"}
    assert sum(joint["weights"].values()) == pytest.approx(1, abs=1e-3)
    assert joint["n"] == n_test  # videos without audio are fused over rgb and flow
    with np.load(out / "predictions.npz") as p:
        check_against_sklearn(joint, p["test_y"], p["test_proba"].argmax(1), labels.class_names)
        assert set(test_without) <= set(p["test_ids"].tolist())

    # a second call reuses the per-modality runs
    stamp = (work / "runs" / "rgb-lstm-seed0" / "model.joblib").stat().st_mtime_ns
    assert fuse_mod.main(["--modalities", "rgb,flow", "--work", str(work), "--manifest", str(manifest)]) == 0
    assert (work / "runs" / "rgb-lstm-seed0" / "model.joblib").stat().st_mtime_ns == stamp
    assert (work / "runs" / "fuse-rgb+flow-weighted" / "metrics.json").is_file()


def test_fuse_cli_reports_a_missing_cache(tmp_path, capsys):
    work, manifest = synthetic_work(tmp_path, ("rgb",))
    assert fuse_mod.main(["--modalities", "rgb,flow", "--work", str(work), "--manifest", str(manifest)]) == 2
    assert "flow" in capsys.readouterr().err
