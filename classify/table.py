"""The seed's results table, reproduced on the features in a work folder.

    python -m classify.table [--manifest M] [--work W] [--seeds 5] [--dataset dmver|iemocap|music-video|other]
                             [--head lstm] [--rule weighted] [--extra-rows auto|none|NAMES] [--out DIR]
                             [--cv fixed|K|groups] [--metric accuracy|balanced_accuracy|macro_f1]

Rows and columns are data (`SEED_ROWS`, `EXTRA_ROWS`: each a `Row` of {column: modalities});
the seed's three rows, as in the DMVER README:

    ConvNet+LSTM   RGB = rgb2d features (ResNet-18 per frame) with the LSTM head
    I3D            RGB = rgb, Flow/Audio = flow,  Joint = late fusion of rgb + flow
    Audio+I3D      RGB = rgb, Flow/Audio = audio, Joint = late fusion of rgb + flow + audio

and beyond them, in a table of their own marked as not published: Text (the caption alone),
All modalities (rgb + flow + audio + text fused), and the newer backbones, each alone in its
column: R(2+1)D, S3D and CLIP (RGB = r2plus1d, s3d, clip), wav2vec 2.0 and HuBERT (Flow/Audio =
wav2vec2, hubert). `--extra-rows auto` (default) shows the extra rows whose modalities all have a
cache; `--extra-rows "R(2+1)D,HuBERT"` names them (a named row without its cache gives n/a cells). The footer's column notes are generated from the
rows and the modality registry.

Every cell is the test accuracy, balanced accuracy and macro-F1 as mean +- std over seeds
0..SEEDS-1 (with `--cv K|groups`, over folds x seeds: `classify.protocol`); seed S of a joint
cell fuses the single runs of seed S (`classify.fuse`) on the same fold. Each cell also has a
bootstrap 95 % interval over the test videos (`ci95`), and each joint cell a paired test
against the best single modality it fuses (`p_joint_vs_best_single`; `classify.stats`).
`--metric` chooses the headline of the Markdown; the JSON keeps all three. Runs already in
`W/runs/` are reused, so a second call only fuses, tests and draws. Single modalities are
trained one modality at a time through one `FeatureStore` (all folds and seeds of a modality in
a row), so each cache is loaded once.

Writes (each file atomically) `DIR/table.md` (also printed), `table.csv` (one row per cell),
`table.json`, `confusion_joint.png` (the joint models' confusion matrices summed over seeds)
and `per_class_recall.png`. With `--dataset dmver|iemocap|music-video` the published numbers
(FACTS.md section 2) stand beside ours. A modality without a cache gives "n/a" cells with a
note; exit 2 only when no cell at all could be computed.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from classify import protocol, stats
from classify.fuse import RULES, fuse
from classify.heads import HEADS
from classify.runs import DEFAULT_MANIFEST, DEFAULT_WORK
from classify.data import FeatureStore, Labels
from classify.train import train_runs
from extract.manifest import describe_leaks
from extract import stage
from features import cache

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: its cells as {column: modalities} (one modality: a single run;
    several: the late fusion of their runs), a fixed head if the method has one, and whether the
    seed's published table has it (published numbers are keyed by row and column name)."""
    name: str
    cells: dict[str, tuple[str, ...]]
    head: str | None = None
    published: bool = True


COLUMNS = ("RGB", "Flow/Audio", "Joint")
SEED_ROWS = (
    Row("ConvNet+LSTM", {"RGB": ("rgb2d",)}, head="lstm"),  # an LSTM whatever --head says
    Row("I3D", {"RGB": ("rgb",), "Flow/Audio": ("flow",), "Joint": ("rgb", "flow")}),
    Row("Audio+I3D", {"RGB": ("rgb",), "Flow/Audio": ("audio",), "Joint": ("rgb", "flow", "audio")}),
)
# Beyond the seed's table: shown when every modality of the row has a cache (or named with --extra-rows).
EXTRA_ROWS = (
    Row("Text", {"Text": ("text",)}, published=False),
    Row("All modalities", {"Joint": ("rgb", "flow", "audio", "text")}, published=False),
    # newer backbones (issue 13; extracted by name, not by `make features`)
    Row("R(2+1)D", {"RGB": ("r2plus1d",)}, published=False),
    Row("S3D", {"RGB": ("s3d",)}, published=False),
    Row("CLIP", {"RGB": ("clip",)}, published=False),
    Row("wav2vec 2.0", {"Flow/Audio": ("wav2vec2",)}, published=False),
    Row("HuBERT", {"Flow/Audio": ("hubert",)}, published=False),
)

# Published top-1 test accuracy in percent, from FACTS.md section 2 (the seed README's table),
# by dataset, row and column; a column the published table has as "-" is absent.
PUBLISHED = {
    "iemocap": {"ConvNet+LSTM": {"RGB": 50.77}, "I3D": {"RGB": 78.46, "Flow/Audio": 56.15, "Joint": 77.50},
                "Audio+I3D": {"RGB": 78.46, "Flow/Audio": 55.96, "Joint": 72.69}},
    "music-video": {"ConvNet+LSTM": {"RGB": 27.92}, "I3D": {"RGB": 57.61, "Flow/Audio": 48.98, "Joint": 55.58},
                    "Audio+I3D": {"RGB": 57.61, "Flow/Audio": 44.42, "Joint": 58.38}},
    "dmver": {"ConvNet+LSTM": {"RGB": 37.91}, "I3D": {"RGB": 54.02, "Flow/Audio": 59.03, "Joint": 61.67},
              "Audio+I3D": {"RGB": 54.02, "Flow/Audio": 46.42, "Joint": 62.41}},
}
DATASETS = ("dmver", "iemocap", "music-video", "other")
DATASET_NAMES = {"dmver": "DMVER", "iemocap": "IEMOCAP", "music-video": "Music-video", "other": "this dataset"}


def singles(rows) -> list[tuple[str, str | None]]:
    """(modality, fixed head) of every single run the rows need, in order of first use: the
    training order, one cache in memory at a time."""
    out: dict[tuple[str, str | None], None] = {}
    for row in rows:
        for mods in row.cells.values():
            for m in mods:
                out.setdefault((m, row.head), None)
    return list(out)


def modalities_of(rows) -> list[str]:
    return list(dict.fromkeys(m for row in rows for mods in row.cells.values() for m in mods))


def select_extra_rows(work, names: str = "auto") -> tuple[Row, ...]:
    """`auto`: the extra rows whose modalities all have a cache; `none`; or row names, comma-separated."""
    if names == "auto":
        return tuple(r for r in EXTRA_ROWS if all(cache.exists(work, m) for m in modalities_of([r])))
    if names in ("", "none"):
        return ()
    by_name = {r.name.lower(): r for r in EXTRA_ROWS}
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"unknown extra row(s) {unknown}; known: {', '.join(r.name for r in EXTRA_ROWS)}")
    return tuple(by_name[n] for n in wanted)


# ----------------------------------------------------------------------------- computing


def _stats(values: list[float], key: str = "per_seed") -> dict:
    """Mean and sample std (ddof=1; 0 for one value) of per-run fractions; the values under `key`
    (`per_seed` for the fixed split, `per_run` over folds x seeds, fold-major, for cross-validation)."""
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            key: [float(v) for v in arr]}


def _mean_recall(recalls: list[dict], class_names: list[str]) -> dict:
    """Per-class recall averaged over runs (a class absent from the test split stays None)."""
    out = {}
    for c in class_names:
        vals = [r.get(c) for r in recalls if r.get(c) is not None]
        out[c] = float(np.mean(vals)) if vals else None
    return out


def _train_singles(work, folds: list[Labels], head: str, seeds: list[int], store: FeatureStore, rows,
                   jobs: int = 1) -> dict:
    """(modality, head) -> {"runs": [[RunResult per seed] per fold]} or {"error": message}.

    Modality by modality (one cache in memory at a time), every fold and seed of it through
    `train_runs` (`jobs` at a time): loading and time pooling are shared by all of them."""
    done = {}
    for modality, fixed in singles(rows):
        h = fixed or head
        if (modality, h) in done:
            continue
        t = time.perf_counter()
        try:
            runs = train_runs(work, folds, modality, h, seeds, store=store, jobs=jobs)
        except (cache.CacheError, ValueError) as exc:
            done[(modality, h)] = {"error": str(exc)}
            log.warning("%s: n/a (%s)", modality, exc)
            continue
        trained = sum(not r.reused for per_seed in runs for r in per_seed)
        log.info("%s %s: %d runs trained, %d reused in %.1f s", modality, h, trained,
                 sum(len(p) for p in runs) - trained, time.perf_counter() - t)
        done[(modality, h)] = {"runs": runs}
    return done


def _pooled(grid: list[list[tuple[list[str], np.ndarray]]], n_seeds: int) -> tuple[list[str], np.ndarray]:
    """Test predictions of every fold pooled per seed: (ids, `[seeds, n]` class indices, -1: not scored).

    For the fixed split there is one fold; in cross-validation each video is in one fold's test
    part, so seed s's pooled "run" scores every video once."""
    order: dict[str, int] = {}
    for per_seed in grid:
        for ids, _ in per_seed:
            for i in ids:
                order.setdefault(i, len(order))
    P = np.full((n_seeds, len(order)), -1, dtype=np.int64)
    for per_seed in grid:
        for s, (ids, pred) in enumerate(per_seed):
            P[s, [order[i] for i in ids]] = pred
    return list(order), P


def _predictions(proba_ids, proba) -> tuple[list[str], np.ndarray]:
    proba = np.asarray(proba)
    return list(proba_ids), (proba.argmax(axis=1) if len(proba) else np.zeros(0, dtype=np.int64))


def _cell(row: Row, column: str, modalities: tuple, head: str, rule: str, seeds: list[int], singles: dict,
          work, folds: list[Labels], store: FeatureStore) -> dict:
    h = row.head or head
    cell = {"row": row.name, "column": column, "modalities": list(modalities), "head": h,
            "kind": "joint" if len(modalities) > 1 else "single", "status": "ok", "note": None,
            "in_published_table": row.published}
    if cell["kind"] == "joint":
        cell["rule"] = rule
    errors = [f"{m}: {singles[(m, h)]['error']}" for m in modalities if "error" in singles[(m, h)]]
    if errors:
        cell.update(status="n/a", note="; ".join(errors))
        return cell
    if cell["kind"] == "single":
        grid = singles[(modalities[0], h)]["runs"]
        metrics = [[r.metrics for r in per_seed] for per_seed in grid]
        scored = [[_predictions(r.test_ids, r.test_proba) for r in per_seed] for per_seed in grid]
    else:
        try:
            grid = [[fuse(work, fold, list(modalities), h, rule, seed, store) for seed in seeds] for fold in folds]
        except (cache.CacheError, ValueError) as exc:
            cell.update(status="n/a", note=f"fusion failed: {exc}")
            return cell
        metrics = [[f.metrics["joint"] for f in per_seed] for per_seed in grid]
        scored = [[_predictions(f.test_ids, f.test_proba) for f in per_seed] for per_seed in grid]
    joint = [m for per_fold in metrics for m in per_fold]
    paths = [str(r.path) for per_fold in grid for r in per_fold]
    if cell["kind"] == "joint":
        cell["weights"] = {m: float(np.mean([j["weights"][m] for j in joint])) for m in modalities}
    if any(j["accuracy"] is None for j in joint):
        cell.update(status="n/a", note="no test video has " + "+".join(modalities) + " features")
        return cell
    key = "per_seed" if len(folds) == 1 else "per_run"
    ids, P = _pooled(scored, len(seeds))
    y = np.array([folds[0].label[i] for i in ids], dtype=np.int64)
    dist = stats.bootstrap(y, P, len(folds[0].class_names))
    cell.update({
        **{m: _stats([j[m] for j in joint], key) for m in stats.METRICS},
        "n_test": len(ids),
        "ci95": stats.interval(dist["accuracy"]),
        "ci95_by_metric": {m: stats.interval(dist[m]) for m in stats.METRICS},
        "per_class_recall": _mean_recall([j["per_class_recall"] for j in joint], folds[0].class_names),
        "confusion_matrix_sum": np.sum([j["confusion_matrix"] for j in joint], axis=0).astype(int).tolist(),
        "runs": paths,
    })
    cell["_scored"] = (ids, P)  # for the significance tests; dropped before the table is returned
    return cell


def _single_scores(singles: dict, seeds: list[int]) -> dict:
    """(modality, head) -> (ids, pooled predictions) of every single modality that trained."""
    out = {}
    for key, entry in singles.items():
        if "runs" in entry:
            out[key] = _pooled([[_predictions(r.test_ids, r.test_proba) for r in per_seed] for per_seed in entry["runs"]],
                               len(seeds))
    return out


def _significance(cell: dict, scores: dict, label: dict[str, int], k: int) -> None:
    """Add `p_joint_vs_best_single` (accuracy), `p_by_metric`, `best_single` and per-seed McNemar
    tests to a joint cell: the joint model against the best single modality among those it fuses
    (highest mean of each metric over its runs), on the videos both scored."""
    ids_j, P_j = cell["_scored"]
    where = {i: n for n, i in enumerate(ids_j)}
    candidates = []
    for m in cell["modalities"]:
        if (m, cell["head"]) not in scores:
            continue
        ids_s, P_s = scores[(m, cell["head"])]
        keep = [n for n, i in enumerate(ids_s) if i in where and (P_s[:, n] >= 0).all()]
        if not keep:
            continue
        y = np.array([label[ids_s[n]] for n in keep], dtype=np.int64)
        single, joint = P_s[:, keep], P_j[:, [where[ids_s[n]] for n in keep]]
        d_s, d_j = stats.bootstrap(y, single, k), stats.bootstrap(y, joint, k)  # same seed, same n: same resamples
        means = {metric: float(np.mean([stats.metric_from_confusion(_confusion(y, p, k), metric) for p in single]))
                 for metric in stats.METRICS}
        candidates.append({"modality": m, "means": means, "p": {metric: stats.paired_p(d_j[metric], d_s[metric])
                                                                 for metric in stats.METRICS},
                           "y": y, "joint": joint, "single": single})
    if not candidates:
        return
    best = {metric: max(candidates, key=lambda c: c["means"][metric]) for metric in stats.METRICS}
    top = best["accuracy"]
    cell["best_single"] = top["modality"]
    cell["best_single_by_metric"] = {metric: {"modality": c["modality"], "mean": c["means"][metric],
                                              "n_common": len(c["y"])} for metric, c in best.items()}
    cell["p_joint_vs_best_single"] = top["p"]["accuracy"]
    cell["p_by_metric"] = {metric: c["p"][metric] for metric, c in best.items()}
    y = top["y"]
    cell["mcnemar_vs_best_single"] = [{"seed_index": s, **stats.mcnemar_exact(top["joint"][s] == y, top["single"][s] == y)}
                                      for s in range(len(top["joint"]))]


def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def _describe_rows(rows) -> str:
    """'ConvNet+LSTM: RGB = rgb2d (ResNet-18 on each frame); I3D: RGB = rgb, ...' from the declarations."""
    from features import modalities as registry

    def name(m: str) -> str:
        try:
            return f"{m} ({registry.get(m).summary})"
        except ValueError:
            return m
    parts = []
    for row in rows:
        cells = ", ".join(f"{col} = {'+'.join(mods) if len(mods) > 1 else name(mods[0])}" for col, mods in row.cells.items())
        parts.append(f"{row.name}: {cells}")
    return "; ".join(parts)


def build_table(work, labels: Labels, seeds: list[int], head: str = "lstm", rule: str = "weighted",
                dataset: str = "other", extra_rows: tuple[Row, ...] = (), cv="fixed", metric: str = "accuracy",
                jobs: int = 1) -> dict:
    """Train or reuse every run, fuse, and return the table as a JSON-ready dict (fractions).

    `cv`: "fixed" (the manifest's split), K or "groups" (`classify.protocol`); `metric`: the
    headline of the Markdown (the JSON has all three); `jobs`: single runs trained at a time
    (`classify.train.train_runs`; 0 = one per core)."""
    if metric not in stats.METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(stats.METRICS)}")
    t0 = time.perf_counter()
    cv = protocol.parse_cv(cv)
    folds = protocol.fold_labels(labels, cv)
    rows = SEED_ROWS + tuple(extra_rows)
    store = FeatureStore(work)
    trained = _train_singles(work, folds, head, seeds, store, rows, jobs)
    published = PUBLISHED.get(dataset)
    cells = []
    for row in rows:
        for column, modalities in row.cells.items():
            cell = _cell(row, column, modalities, head, rule, seeds, trained, work, folds, store)
            if published is not None and row.published:
                cell["published_accuracy_percent"] = published.get(row.name, {}).get(column)
            cells.append(cell)
    scores = _single_scores(trained, seeds)
    for cell in cells:
        if cell["kind"] == "joint" and cell["status"] == "ok":
            _significance(cell, scores, labels.label, len(labels.class_names))
        cell.pop("_scored", None)
    n_test = len(labels.ids("test")) if cv == protocol.FIXED else len(folds[0].label)
    leaks = protocol.leaking_groups(labels) if cv == protocol.FIXED else {}
    if leaks:
        log.warning("the manifest's splits leak groups, so the scores may be inflated: %s", describe_leaks(leaks))
    return {
        "banner": cache.random_weights_banner(work, modalities_of(rows)),
        "dataset": dataset, "work": str(work), "seeds": seeds, "head": head,
        "protocol": protocol.describe(cv, len(folds)),
        "folds": [f.tag for f in folds] if cv != protocol.FIXED else [],
        "held_out_groups": _held_out(folds) if cv == protocol.GROUPS else None,
        "metric": metric,
        "leaking_groups": describe_leaks(leaks) if leaks else None,
        "fixed_heads": {r.name: r.head for r in rows if r.head},
        "rule": rule, "class_names": labels.class_names, "n_test": n_test,
        "units": "fractions (0..1) for ours; published_accuracy_percent in percent",
        "published_source": "FACTS.md section 2 (the seed DMVER README's table)" if published else None,
        "intervals": {"ci95": "percentile bootstrap 95 % interval of the test accuracy (ci95_by_metric: each metric) "
                              "over the test videos: videos resampled with replacement, the metric of every run on each "
                              "resample averaged over the runs (seeds; in cross-validation each seed pools all folds)",
                      "n_boot": stats.N_BOOT, "seed": stats.SEED},
        "significance": {"p_joint_vs_best_single": "one-sided paired bootstrap over the test videos both models scored "
                                                   "(same resamples as ci95): (1 + #resamples with joint - best single "
                                                   "<= 0) / (n_boot + 1), on accuracy (p_by_metric: each metric); "
                                                   "best single = the fused modality with the highest mean",
                         "mcnemar_vs_best_single": "exact McNemar test (two-sided) per seed on the same videos",
                         "alpha": stats.ALPHA},
        "rows": [{"name": r.name, "cells": {c: list(m) for c, m in r.cells.items()}, "head": r.head,
                  "in_published_table": r.published} for r in rows],
        "columns": _describe_rows(rows),
        "cells": cells,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _held_out(folds: list[Labels]) -> list[str]:
    """The group each leave-one-group-out fold tests."""
    return [next(iter({f.group[i] for i in f.ids("test")})) for f in folds]


# ----------------------------------------------------------------------------- rendering


METRIC_NAMES = {"accuracy": "Test accuracy", "balanced_accuracy": "Balanced accuracy (mean per-class recall)",
                "macro_f1": "Macro-F1"}


def _pct(stats: dict | None, with_std: bool = True) -> str:
    if not stats:
        return "n/a"
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}" if with_std else f"{100 * stats['mean']:.2f}"


def _cell_text(cell: dict, metric: str, with_ci: bool) -> str:
    """`61.70 ± 1.20 [58.90, 64.30]`, and ` (n.s.)` for a joint cell not significantly better than
    its best single modality."""
    text = _pct(cell.get(metric))
    if with_ci and cell.get("ci95_by_metric"):
        lo, hi = cell["ci95_by_metric"][metric]
        text += f" [{100 * lo:.1f}, {100 * hi:.1f}]"  # one decimal: the interval is not known better
    p = (cell.get("p_by_metric") or {}).get(metric)
    if with_ci and p is not None and p >= stats.ALPHA:
        text += " (n.s.)"
    return text


def _find(table: dict, row: str, column: str) -> dict | None:
    return next((c for c in table["cells"] if c["row"] == row and c["column"] == column), None)


def _seed_text(seeds: list[int]) -> str:
    if seeds == list(range(len(seeds))) and len(seeds) > 1:
        return f"0-{len(seeds) - 1} ({len(seeds)} per cell)"
    return f"{', '.join(map(str, seeds))} ({len(seeds)} per cell)"


def _grid(table: dict, rows: list[dict], metric: str, published: bool, notes: list[str], with_ci: bool = False) -> list[str]:
    """One Markdown table of `rows` (from table["rows"]) over the columns they declare."""
    columns = list(dict.fromkeys(c for r in rows for c in r["cells"]))
    header = ["Method"]
    for col in columns:
        header += [col, f"{col} published"] if published else [col]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        out = [row["name"]]
        for col in columns:
            cell = _find(table, row["name"], col)
            text = "-" if cell is None else _cell_text(cell, metric, with_ci)
            if cell is not None and cell["status"] != "ok":
                note = f"{row['name']} {col} ({'+'.join(cell['modalities'])}): {cell['note']}"
                if note not in notes:
                    notes.append(note)
                text = f"n/a [{notes.index(note) + 1}]"
            out.append(text)
            if published:
                value = None if cell is None else cell.get("published_accuracy_percent")
                out.append("-" if value is None else f"{value:.2f}")
        lines.append("| " + " | ".join(out) + " |")
    return lines


def _protocol_lines(table: dict, fewer: str) -> list[str]:
    cv, n = table["protocol"]["cv"], table["protocol"]["folds"]
    if cv == protocol.FIXED:
        return [f"- Test videos: {table['n_test']} (manifest test split){fewer}."]
    how = (f"leave-one-group-out, one fold per group ({', '.join(table['held_out_groups'])})" if cv == protocol.GROUPS
           else f"{cv}-fold cross-validation, stratified by class and group-aware")
    return [f"- Protocol: {how}, over all {table['n_test']} labelled videos (the manifest's splits are not used); "
            f"no group is in two parts of a fold, and the validation part is whole groups carved out of each fold's "
            f"training part. Every video is tested once per seed; runs `W/runs/*-{table['folds'][0]}` .. "
            f"`*-{table['folds'][-1]}`.",
            f"- Test videos: {table['n_test']} over the {n} folds{fewer}."]


def markdown(table: dict) -> str:
    """The table as Markdown, the random-weights banner (if any) first; rows beyond the seed's
    table follow in a table of their own, marked as not published. The headline metric (with
    its bootstrap interval) first, then the two others (mean ± std)."""
    published = table["published_source"] is not None
    name = DATASET_NAMES[table["dataset"]]
    seed_rows = [r for r in table["rows"] if r["in_published_table"]]
    extra_rows = [r for r in table["rows"] if not r["in_published_table"]]
    n_seeds = len(table["seeds"])
    prot = table.get("protocol", {"cv": protocol.FIXED, "folds": 1})
    fixed = prot["cv"] == protocol.FIXED
    over = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}" if fixed else f"{prot['folds']} folds × {n_seeds} seed{'s' if n_seeds > 1 else ''}"
    metric = table.get("metric", "accuracy")
    lines = []
    if table["banner"]:
        lines += [table["banner"], ""]
    lines += [f"## Emotion recognition results on {name} ({protocol.title(prot['cv'], prot['folds'])})", "",
              f"{METRIC_NAMES[metric]} (%), mean ± std over {over} [95 % bootstrap interval over test videos]"
              + (f"; \"published\" = {table['published_source']}." if published and metric == "accuracy" else "."), ""]
    notes: list[str] = []
    lines += _grid(table, seed_rows, metric, published and metric == "accuracy", notes, with_ci=True)
    if extra_rows:
        lines += ["", f"Beyond the published table (these rows are not in the seed's results), {METRIC_NAMES[metric].lower()} (%):", ""]
        lines += _grid(table, extra_rows, metric, False, notes, with_ci=True)
    for other in (m for m in stats.METRICS if m != metric):
        lines += ["", f"{METRIC_NAMES[other]} (%), mean ± std over the same runs"
                  + (f"; \"published\" = {table['published_source']}:" if published and other == "accuracy" else ":"), ""]
        lines += _grid(table, seed_rows, other, published and other == "accuracy", notes)
        if extra_rows:
            lines += [""] + _grid(table, extra_rows, other, False, notes)
    lines.append("")
    if notes:
        lines += ["Not available:"] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)] + [""]
    n_runs = table["n_test"]
    counts = sorted({(c["n_test"], "+".join(c["modalities"])) for c in table["cells"] if c["status"] == "ok"
                     and c["n_test"] != n_runs}, key=lambda t: t[1])
    fewer = "".join(f"; {m} cells score {n} (videos without {m} are left out)" for n, m in counts)
    weights = []
    for c in table["cells"]:
        if c["kind"] == "joint" and c["status"] == "ok":
            weights.append(f"{c['row']} " + ", ".join(f"{m} {w:.2f}" for m, w in c["weights"].items()))
    fixed_heads = "".join(f" (the {r} row always uses {h})" for r, h in table["fixed_heads"].items())
    joints = [c for c in table["cells"] if c["kind"] == "joint" and c.get("p_by_metric")]
    if table.get("leaking_groups"):
        lines.append(f"- **Warning**: the manifest's splits put {table['leaking_groups']}; a classifier may "
                     f"recognise them instead of the emotion (`python -m extract.manifest check`; `--cv K` keeps "
                     f"groups whole).")
    lines += [
        f"- Seeds: {_seed_text(table['seeds'])}; std is the sample standard deviation over "
        f"{'seeds' if fixed else 'folds × seeds'} (ddof=1).",
        f"- Head: {table['head']} on frozen backbone features{fixed_heads}; fusion rule: {table['rule']} (late fusion of "
        f"the single runs' class probabilities, chosen on the validation split)"
        + (f"; mean weights: {'; '.join(weights)}." if weights else "."),
        *_protocol_lines(table, fewer),
        f"- [low, high]: 95 % bootstrap interval of the {METRIC_NAMES[metric].lower()} over the test videos "
        f"({stats.N_BOOT} resamples of the videos, seed {stats.SEED}; on each resample the mean over "
        f"{'the seeds' if fixed else 'the seeds, each pooling all folds'}).",
    ]
    if joints:
        ns = [f"{c['row']} (p = {c['p_by_metric'][metric]:.3f} against {c['best_single_by_metric'][metric]['modality']})"
              for c in joints]
        lines.append(f"- (n.s.): the joint model is not significantly better than the best single modality it fuses "
                     f"(one-sided paired bootstrap over the videos both scored, p ≥ {stats.ALPHA}); {'; '.join(ns)}. "
                     f"Exact McNemar tests per seed are in table.json.")
    lines += [f"- Columns: {table['columns']}.",
              "- Accuracies, balanced accuracies and macro-F1 in percent."]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("method", "column", "modalities", "in_published_table", "head", "rule", "status", "note", "n_test", "seeds",
              "protocol", "folds", "accuracy_mean_pct", "accuracy_std_pct", "accuracy_per_seed_pct",
              "accuracy_ci95_low_pct", "accuracy_ci95_high_pct", "balanced_accuracy_mean_pct",
              "balanced_accuracy_std_pct", "balanced_accuracy_per_seed_pct", "macro_f1_mean_pct", "macro_f1_std_pct",
              "macro_f1_per_seed_pct", "best_single", "p_joint_vs_best_single", "published_accuracy_pct")


def csv_text(table: dict) -> str:
    """One row per cell; per-run values joined by ';' (percent, two decimals kept as floats): per
    seed for the fixed split, per fold and seed (fold-major) in cross-validation."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    prot = table.get("protocol", {"cv": protocol.FIXED, "folds": 1})
    for c in table["cells"]:
        row = {"method": c["row"], "column": c["column"], "modalities": "+".join(c["modalities"]),
               "in_published_table": c["in_published_table"], "head": c["head"],
               "rule": c.get("rule", ""), "status": c["status"], "note": c["note"] or "",
               "n_test": c.get("n_test", ""), "seeds": ";".join(map(str, table["seeds"])),
               "protocol": prot["cv"], "folds": prot["folds"],
               "best_single": c.get("best_single", ""),
               "p_joint_vs_best_single": "" if c.get("p_joint_vs_best_single") is None else c["p_joint_vs_best_single"],
               "published_accuracy_pct": "" if c.get("published_accuracy_percent") is None
               else c["published_accuracy_percent"]}
        for key in stats.METRICS:
            s = c.get(key)
            row[f"{key}_mean_pct"] = "" if s is None else round(100 * s["mean"], 4)
            row[f"{key}_std_pct"] = "" if s is None else round(100 * s["std"], 4)
            values = None if s is None else s.get("per_seed", s.get("per_run"))
            row[f"{key}_per_seed_pct"] = "" if s is None else ";".join(f"{100 * v:.4f}" for v in values)
        ci = c.get("ci95")
        row["accuracy_ci95_low_pct"] = "" if ci is None else round(100 * ci[0], 4)
        row["accuracy_ci95_high_pct"] = "" if ci is None else round(100 * ci[1], 4)
        writer.writerow(row)
    return buf.getvalue()


def _runs_text(table: dict) -> str:
    seeds = len(table["seeds"])
    folds = table.get("protocol", {}).get("folds", 1)
    text = f"{seeds} seed{'s' if seeds > 1 else ''}"
    return text if folds == 1 else f"{folds} folds × {text}"


def _confusion_figure(table: dict):
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


def _recall_figure(table: dict):
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


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_outputs(table: dict, out) -> tuple[str, list[Path]]:
    """Write table.md/.csv/.json and the figures into `out`; returns (markdown, written paths)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(table)
    written = []
    for name, data in (("table.md", md.encode("utf-8")), ("table.csv", csv_text(table).encode("utf-8")),
                       ("table.json", (json.dumps(table, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))):
        _write_atomic(out / name, data)
        written.append(out / name)
    for name, maker in (("confusion_joint.png", _confusion_figure), ("per_class_recall.png", _recall_figure)):
        fig = maker(table)
        if fig is None:
            (out / name).unlink(missing_ok=True)  # never leave a stale figure of an earlier table
            continue
        _write_atomic(out / name, _png_bytes(fig))
        written.append(out / name)
    return md, written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classify.table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default=DEFAULT_MANIFEST)
    parser.add_argument("--work", default=DEFAULT_WORK)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..SEEDS-1 per cell")
    parser.add_argument("--dataset", default="other", choices=DATASETS, help="which published numbers to show")
    parser.add_argument("--head", default="lstm", choices=HEADS)
    parser.add_argument("--rule", default="weighted", choices=RULES)
    parser.add_argument("--out", default=None, help="output folder (default WORK/table)")
    parser.add_argument("--cv", default="fixed", help="fixed (the manifest's split, as published; default), K "
                                                      "(group-aware K-fold over all labelled videos) or groups "
                                                      "(leave-one-group-out); see classify.protocol")
    parser.add_argument("--jobs", type=int, default=0,
                        help="single runs trained at a time in worker processes (default 0: one per core)")
    parser.add_argument("--metric", default="accuracy", choices=stats.METRICS,
                        help="headline metric of the Markdown (table.json keeps all three)")
    parser.add_argument("--extra-rows", default="auto",
                        help="rows beyond the seed's table: auto (those whose caches exist), none, or names: "
                             + ", ".join(r.name for r in EXTRA_ROWS))
    parser.add_argument("--verbose", action="store_true", help="a traceback with any error")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        extra = select_extra_rows(args.work, args.extra_rows)
        banner = cache.random_weights_banner(args.work, modalities_of(SEED_ROWS + extra))
        if banner:
            print(banner + "\n", flush=True)
        labels = Labels.from_manifest(args.manifest)
        table = build_table(args.work, labels, list(range(args.seeds)), args.head, args.rule, args.dataset, extra,
                            cv=args.cv, metric=args.metric, jobs=args.jobs)
    except Exception as exc:  # a bad manifest or row name, a crash: the run failed, exit 2
        return stage.run_failed(exc, args.verbose)
    if not any(c["status"] == "ok" for c in table["cells"]):
        reasons = sorted({c["note"] for c in table["cells"] if c["note"]})
        print("error: no cell of the table could be computed:\n  " + "\n  ".join(reasons), file=sys.stderr)
        return stage.EXIT_RUN_FAILED
    md, written = write_outputs(table, args.out or Path(args.work) / "table")
    body = md[len(banner) + 2:] if banner and md.startswith(banner) else md
    print(body)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
