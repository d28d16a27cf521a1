"""The table's figures: the joint models' confusion matrices and per-class recall by modality.

Drawn from the dict `classify.cells.build_table` returns, with matplotlib's object API (no
pyplot state, no display needed); `FIGURES` names each file and the function that draws it
(None when the table has nothing to draw, e.g. no joint cell was computed).
"""
from __future__ import annotations

import io

import numpy as np


def _runs_text(table: dict) -> str:
    seeds = len(table["seeds"])
    folds = table.get("protocol", {}).get("folds", 1)
    text = f"{seeds} seed{'s' if seeds > 1 else ''}"
    return text if folds == 1 else f"{folds} folds × {text}"


def confusion_figure(table: dict):
    from matplotlib.figure import Figure

    joints = [c for c in table["cells"] if c["kind"] == "joint" and c["status"] == "ok"]
    if not joints:
        return None
    names = table["class_names"]
    k = len(names)
    size = max(4.0, 0.9 * k + 2.5)
    fig = Figure(figsize=(size * len(joints), size + 0.4), layout="constrained")
    axes = fig.subplots(1, len(joints), squeeze=False)[0]
    for ax, c in zip(axes, joints):
        cm = np.asarray(c["confusion_matrix_sum"], dtype=np.int64)
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{cm[i, j]}\n{100 * share[i, j]:.0f} %", ha="center", va="center", fontsize=9,
                        color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(k), names, rotation=30 if k > 3 else 0, ha="right" if k > 3 else "center")
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{c['row']} joint ({'+'.join(c['modalities'])}, {c['rule']})\n"
                     f"test counts summed over {_runs_text(table)}; row %", fontsize=10)
    return fig


def recall_figure(table: dict):
    from matplotlib.figure import Figure

    series = []
    seen = set()
    # single modalities first, in the order the rows use them, then the joint models
    order = list(dict.fromkeys(m for r in table["rows"] for mods in r["cells"].values() for m in mods))
    cells = sorted(table["cells"], key=lambda c: (c["kind"] == "joint",
                                                  order.index(c["modalities"][0]) if c["kind"] == "single" else 0))
    for c in cells:
        if c["status"] != "ok":
            continue
        label = c["modalities"][0] if c["kind"] == "single" else f"{c['row']} joint ({'+'.join(c['modalities'])})"
        if label in seen:
            continue
        seen.add(label)
        series.append((label, [np.nan if c["per_class_recall"][n] is None else 100 * c["per_class_recall"][n]
                               for n in table["class_names"]]))
    if not series:
        return None
    names = table["class_names"]
    k, s = len(names), len(series)
    fig = Figure(figsize=(max(7.0, 1.1 * k * s * 0.45 + 3), 5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / s
    x = np.arange(k)
    for i, (label, values) in enumerate(series):
        bars = ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=label)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.0f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(x, names)
    ax.set_xlabel("true class")
    ax.set_ylabel("per-class accuracy (recall), %")
    ax.set_ylim(0, 110)
    ax.set_title(f"Per-class test accuracy by modality, mean over {_runs_text(table)} "
                 f"({table['head']} head, {table['rule']} fusion)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


FIGURES = (("confusion_joint.png", confusion_figure), ("per_class_recall.png", recall_figure))
