"""Classification metrics as plain JSON values (fractions, not percentages)."""
from __future__ import annotations

import numpy as np


def classification_metrics(y_true, y_pred, class_names: list[str]) -> dict:
    """accuracy, macro_f1, balanced_accuracy, per_class_recall, confusion_matrix, class_names, n.

    Rows of the confusion matrix are true classes, columns predicted ones. Macro-F1 averages the
    classes that occur in `y_true` or `y_pred` (scikit-learn's default); balanced accuracy and
    per-class recall use the classes present in `y_true` (the recall of an absent class is null).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    k = len(class_names)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    recall = np.where(support > 0, tp / np.maximum(support, 1), np.nan)
    precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0)
    f1 = np.where(tp > 0, 2 * precision * np.nan_to_num(recall) / np.maximum(precision + np.nan_to_num(recall), 1e-12), 0.0)
    present = (support > 0) | (predicted > 0)
    n = int(len(y_true))
    return {
        "accuracy": float(tp.sum() / n) if n else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "balanced_accuracy": float(np.nanmean(recall)) if (support > 0).any() else None,
        "per_class_recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(class_names, recall)},
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "n": n,
    }
