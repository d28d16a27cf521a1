"""Classification metrics, from confusion matrices: the one implementation every module uses.

A run's metrics.json (`classification_metrics`), the bootstrap over test videos
(`classify.stats`, thousands of resampled matrices at once) and the table's significance tests
all count a confusion matrix and read the metrics off it here, so the conventions are written
once: rows are true classes, columns predicted ones; macro-F1 averages the classes present in
the truth or the predictions (scikit-learn's default); balanced accuracy and per-class recall use
the classes present in the truth (the recall of an absent class is null). Values are fractions.
"""
from __future__ import annotations

import numpy as np

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def confusion_matrix(y_true, y_pred, k: int) -> np.ndarray:
    """`[k, k]` counts, rows true classes, columns predicted ones."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def _recall(tp: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Per-class recall; 0 for a class absent from the truth (callers mask it out)."""
    return tp / np.maximum(support, 1)


def _f1(tp: np.ndarray, support: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2PR / (P + R), 0 for a class never predicted correctly."""
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    recall = _recall(tp, support)
    return np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)


def metric_from_confusion(cm: np.ndarray, metric: str) -> np.ndarray:
    """`metric` of confusion matrices `[..., K, K]` -> `[...]` (0 where a matrix is empty)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    if metric == "accuracy":
        return tp.sum(axis=-1) / np.maximum(support.sum(axis=-1), 1)
    if metric == "balanced_accuracy":
        seen = support > 0
        return (_recall(tp, support) * seen).sum(axis=-1) / np.maximum(seen.sum(axis=-1), 1)
    if metric == "macro_f1":
        present = (support > 0) | (predicted > 0)
        return (_f1(tp, support, predicted) * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def classification_metrics(y_true, y_pred, class_names: list[str]) -> dict:
    """accuracy, macro_f1, balanced_accuracy, per_class_recall, confusion_matrix, class_names, n.

    A metric with nothing to average over (no video; no class present) is None."""
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    n = int(cm.sum())
    recall = _recall(np.diag(cm), support)
    value = {m: float(metric_from_confusion(cm, m)) for m in METRICS}
    return {
        "accuracy": value["accuracy"] if n else None,
        "macro_f1": value["macro_f1"] if ((support > 0) | (predicted > 0)).any() else None,
        "balanced_accuracy": value["balanced_accuracy"] if (support > 0).any() else None,
        "per_class_recall": {c: (float(r) if s > 0 else None) for c, r, s in zip(class_names, recall, support)},
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "n": n,
    }
