"""Bootstrap intervals and significance tests (classify.stats) against direct computations."""
import numpy as np
import pytest
from sklearn import metrics as skm

from classify import stats


def test_bootstrap_interval_matches_a_direct_numpy_computation():
    rng = np.random.default_rng(1)
    n, runs, n_boot = 300, 3, 500
    y = rng.integers(0, 3, n)
    preds = np.where(rng.random((runs, n)) < 0.6, y, rng.integers(0, 3, (runs, n)))
    dist = stats.bootstrap(y, preds, 3, n_boot=n_boot, seed=7)
    # directly: one draw of all resamples, the accuracy of each run on each resample, mean over runs
    idx = np.random.default_rng(7).integers(0, n, size=(n_boot, n))
    correct = (preds == y).astype(float)
    direct = correct[:, idx].mean(axis=2).mean(axis=0)
    np.testing.assert_allclose(dist["accuracy"], direct, atol=1e-12)
    assert stats.interval(dist["accuracy"]) == pytest.approx(list(np.percentile(direct, [2.5, 97.5])), abs=1e-12)
    lo, hi = stats.interval(dist["accuracy"])
    assert lo < correct.mean() < hi and hi - lo < 0.12  # about 2 x 1.96 x sqrt(.6 x .4 / 300)
    # the other metrics: sklearn on a few resamples, averaged over the runs
    for b in (0, 17, n_boot - 1):
        yy = y[idx[b]]
        assert dist["macro_f1"][b] == pytest.approx(np.mean([skm.f1_score(yy, p[idx[b]], average="macro") for p in preds]))
        assert dist["balanced_accuracy"][b] == pytest.approx(
            np.mean([skm.balanced_accuracy_score(yy, p[idx[b]]) for p in preds]))


def test_bootstrap_ignores_unscored_videos_and_rejects_bad_shapes():
    y = np.array([0, 1, 2, 0])
    dist = stats.bootstrap(y, np.array([[0, 1, -1, 1]]), 3, n_boot=50)
    idx = np.random.default_rng(stats.SEED).integers(0, 4, size=(50, 4))
    right, scored = np.array([1, 1, 0, 0.0]), np.array([1, 1, 0, 1.0])
    expected = right[idx].sum(axis=1) / np.maximum(scored[idx].sum(axis=1), 1)
    np.testing.assert_allclose(dist["accuracy"], expected)
    with pytest.raises(ValueError, match="need predictions"):
        stats.bootstrap(y, np.zeros((2, 3), dtype=int), 3)


def test_paired_p_counts_resamples_where_a_is_not_better():
    a = np.array([0.6, 0.7, 0.5, 0.8])
    b = np.array([0.5, 0.7, 0.6, 0.7])
    assert stats.paired_p(a, b) == pytest.approx((1 + 2) / 5)  # ties count against A
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    better = np.where(rng.random(400) < 0.8, y, (y + 1) % 3)
    worse = np.where(rng.random(400) < 0.5, y, (y + 1) % 3)
    da, db = stats.bootstrap(y, better, 3, n_boot=300), stats.bootstrap(y, worse, 3, n_boot=300)
    assert stats.paired_p(da["accuracy"], db["accuracy"]) == pytest.approx(1 / 301)
    assert stats.paired_p(db["accuracy"], da["accuracy"]) == 1.0


def test_mcnemar_exact_against_a_hand_computed_case():
    # 10 videos: both right on 2, both wrong on 1, A only on 6 (b), B only on 1 (c)
    a = np.array([1, 1, 0, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    b = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    # two-sided: 2 * P[Bin(7, 1/2) <= 1] = 2 * (1 + 7) / 128 = 0.125
    assert stats.mcnemar_exact(a, b) == {"b": 6, "c": 1, "p": 0.125}
    assert stats.mcnemar_exact(b, a)["p"] == 0.125
    assert stats.mcnemar_exact(a, a) == {"b": 0, "c": 0, "p": 1.0}
    # b = c: p capped at 1
    assert stats.mcnemar_exact([1, 0], [0, 1])["p"] == 1.0
    # the large-n branch (scipy) agrees with the exact sum at its boundary
    big_a = np.r_[np.ones(600, bool), np.zeros(401, bool)]
    big_b = ~big_a
    from scipy.stats import binomtest
    assert stats.mcnemar_exact(big_a, big_b)["p"] == pytest.approx(binomtest(401, 1001, 0.5).pvalue, rel=1e-9)


def test_bootstrap_and_run_metrics_share_one_implementation():
    """A resample's metrics come from the same function as a run's metrics.json: one resample that
    draws every video once gives exactly `classification_metrics`' numbers."""
    from classify import metrics

    assert stats.metric_from_confusion is metrics.metric_from_confusion
    rng = np.random.default_rng(3)
    names = ["a", "b", "c", "d"]
    for n in (1, 7, 60):
        y, pred = rng.integers(0, 4, n), rng.integers(0, 4, n)
        pred[: n // 3] = 0  # some classes never predicted, or never true
        m = metrics.classification_metrics(y, pred, names)
        cm = metrics.confusion_matrix(y, pred, 4)
        assert m["confusion_matrix"] == cm.tolist()
        batch = np.stack([cm, cm])  # [2, K, K]
        for metric in metrics.METRICS:
            assert m[metric] == metrics.metric_from_confusion(cm, metric)
            assert metrics.metric_from_confusion(batch, metric).tolist() == [m[metric]] * 2
