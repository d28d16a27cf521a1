"""How sure a table cell is: bootstrap intervals over test videos and paired significance tests.

Seeds measure training noise only; a 1-point difference on a few thousand test videos can be
test-sample noise. Here the test videos themselves are resampled:

* `bootstrap` draws `n_boot` resamples of the n test videos with replacement (numpy
  `default_rng(seed).integers(0, n, (n_boot, n))`, drawn in chunks, which gives the same numbers)
  and computes, for each resample, the metric of every run on those videos and their mean over
  the runs (seeds; for cross-validation one "run" per seed pools the predictions of every fold,
  so each video is scored once per seed). The same seed gives the same resamples for any cell
  of the same n, so two models scored on the same videos are compared on the same resamples.
* `interval`: the percentile interval (2.5th and 97.5th, numpy's linear interpolation).
* `exact_interval`: the Clopper-Pearson (exact binomial) interval of an accuracy, used for the
  accuracy's 95 % interval at every test size: the percentile bootstrap collapses to a point
  when a few test videos are all right (3 of 3 gives [100, 100]), while the exact interval of
  3 of 3 is [29.2, 100].
* `small_test_warning`: the one line every output carries when the test split is too small
  (fewer than `SMALL_TEST` videos) for its numbers to mean much.
* `paired_p`: one-sided p value that model A is not better than model B on the same videos:
  (1 + #resamples where A - B <= 0) / (n_boot + 1).
* `mcnemar_exact`: the exact McNemar test of two single runs' correctness on the same videos
  (two-sided binomial test on the discordant pairs), for one seed at a time.

Each resample's metrics are read off its confusion matrix by `classify.metrics` (the same
function that scores a run). A prediction of -1 means the run did not score that video (it
lacks the modality).
"""
from __future__ import annotations

import math

import numpy as np

from classify.metrics import METRICS, metric_from_confusion

N_BOOT = 2000
SEED = 0
ALPHA = 0.05
_CHUNK = 50  # resamples per matrix product: 50 x 31,761 float64 counts is 13 MB


def _pairs(y_true: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """One-hot (true, predicted) cell of every run's every video: `[R, n, K*K]` (zeros where -1)."""
    cell = y_true[None, :] * k + np.where(preds >= 0, preds, 0)
    onehot = np.zeros(preds.shape + (k * k,), dtype=np.float64)
    np.put_along_axis(onehot, cell[..., None], 1.0, axis=-1)
    onehot[preds < 0] = 0.0
    return onehot


def bootstrap(y_true, preds, k: int, n_boot: int = N_BOOT, seed: int = SEED) -> dict[str, np.ndarray]:
    """{metric: `[n_boot]`}: each resample's metric averaged over the runs.

    `y_true [n]`; `preds [R, n]` (or `[n]` for one run), class indices, -1 for a video a run did not score."""
    y_true = np.asarray(y_true, dtype=np.int64)
    preds = np.atleast_2d(np.asarray(preds, dtype=np.int64))
    n = len(y_true)
    if n == 0 or preds.shape[1] != n:
        raise ValueError(f"need predictions [runs, {n}] for {n} > 0 videos, got {preds.shape}")
    onehot = _pairs(y_true, preds, k)
    rng = np.random.default_rng(seed)
    out = {m: np.empty(n_boot) for m in METRICS}
    for a in range(0, n_boot, _CHUNK):
        b = min(n_boot, a + _CHUNK) - a
        idx = rng.integers(0, n, size=(b, n))
        counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        cm = np.einsum("bn,rnc->brc", counts.astype(np.float64), onehot).reshape(b, len(preds), k, k)
        for m in METRICS:
            out[m][a:a + b] = metric_from_confusion(cm, m).mean(axis=1)
    return out


def interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """Percentile interval of a bootstrap distribution, as [low, high] fractions."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [float(lo), float(hi)]


SMALL_TEST = 30
ACCURACY_INTERVAL = "Clopper-Pearson exact binomial"


def exact_interval(correct: float, n: int, level: float = 0.95) -> list[float]:
    """Clopper-Pearson interval of `correct` right out of `n` (a mean over seeds may be fractional),
    as [low, high] fractions; valid at any n, [0, 1] for n = 0."""
    from scipy.stats import beta

    if n <= 0:
        return [0.0, 1.0]
    k = min(max(float(correct), 0.0), float(n))
    tail = (1 - level) / 2
    lo = 0.0 if k <= 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1 - tail, k + 1, n - k))
    return [lo, hi]


def small_test_warning(n_test: int) -> str | None:
    """The warning for a test split of fewer than SMALL_TEST videos (None otherwise)."""
    if n_test >= SMALL_TEST:
        return None
    return (f"only {n_test} test video{'s' if n_test != 1 else ''} (fewer than {SMALL_TEST}): every figure is "
            f"very uncertain; read the intervals, not the means")


def paired_p(values_a: np.ndarray, values_b: np.ndarray) -> float:
    """One-sided p that A is not better than B, from distributions over the same resamples."""
    diff = np.asarray(values_a) - np.asarray(values_b)
    return float((1 + np.count_nonzero(diff <= 0)) / (len(diff) + 1))


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test: b = A right and B wrong, c = A wrong and B right; two-sided
    p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)]) (1 when there is no discordant pair)."""
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"McNemar needs the same videos for both models, got {a.shape} and {b_.shape}")
    b, c = int(np.count_nonzero(a & ~b_)), int(np.count_nonzero(~a & b_))
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "p": 1.0}
    if n <= 1000:
        tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    else:
        from scipy.stats import binom

        tail = float(binom.cdf(min(b, c), n, 0.5))
    return {"b": b, "c": c, "p": float(min(1.0, 2 * tail))}
