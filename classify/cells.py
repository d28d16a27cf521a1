"""The table's cells: train or reuse every run the rows need, fuse, and score each cell.

`build_table` returns the whole table as a JSON-ready dict (fractions). Every cell is the test
accuracy, balanced accuracy and macro-F1 as mean ± std over seeds (with `--cv K|groups`, over
folds × seeds: `classify.protocol`); seed S of a joint cell fuses the single runs of seed S
(`classify.fuse`) on the same fold; a joint head's row (`Row.rule` early, tfn or xattn) trains
one head per seed on all its modalities instead (`classify.joint_run`, the caches loaded once for
all such rows). Each cell also gets a 95 % interval of its accuracy (`ci95`,
Clopper-Pearson exact binomial, valid on any test size) and bootstrap intervals over the test
videos for the other metrics (`ci95_by_metric`), and each joint cell a paired test against the best single modality it fuses
(`p_joint_vs_best_single`; `classify.stats`). Single modalities are trained one modality at a
time through one `FeatureStore` (all folds and seeds of a modality in a row), so each cache is
loaded once; runs already in `W/runs/` are reused.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from classify import protocol, published, stats
from classify.data import FeatureStore, Labels
from classify.fuse import fuse
from classify.joint import JOINT_RULES
from classify.joint_run import JointData, joint_runs
from classify.metrics import METRICS, confusion_matrix, metric_from_confusion
from classify.rows import SEED_ROWS, Row, describe_rows, modalities_of, singles
from classify.train import train_runs
from extract.manifest import describe_leaks
from features import cache

log = logging.getLogger(__name__)


def run_stats(values: list[float], key: str = "per_seed") -> dict:
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
                   jobs: int = 1, manifest=None) -> dict:
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


def _cell(row: Row, column: str, modalities: tuple, head: str, rule: str, seeds: list[int], trained: dict,
          work, folds: list[Labels], store: FeatureStore, joint_data: dict | None = None) -> dict:
    h = row.head or head
    rule = row.rule or rule
    cell = {"row": row.name, "column": column, "modalities": list(modalities), "head": h,
            "kind": "joint" if len(modalities) > 1 else "single", "status": "ok", "note": None,
            "in_published_table": row.published}
    if cell["kind"] == "joint":
        cell["rule"] = rule
    errors = [f"{m}: {trained[(m, h)]['error']}" for m in modalities if "error" in trained[(m, h)]]
    if errors:
        cell.update(status="n/a", note="; ".join(errors))
        return cell
    if cell["kind"] == "single":
        grid = trained[(modalities[0], h)]["runs"]
        metrics = [[r.metrics for r in per_seed] for per_seed in grid]
        scored = [[_predictions(r.test_ids, r.test_proba) for r in per_seed] for per_seed in grid]
    else:
        try:
            if rule in JOINT_RULES:  # one head on all the modalities: its caches loaded once for every joint row
                data = (joint_data or {}).get(tuple(modalities))
                grid = joint_runs(work, folds, list(modalities), rule, seeds, data=data)
            else:
                grid = [[fuse(work, fold, list(modalities), h, rule, seed, store) for seed in seeds] for fold in folds]
        except (cache.CacheError, ValueError) as exc:
            cell.update(status="n/a", note=f"fusion failed: {exc}")
            return cell
        metrics = [[f.metrics["joint"] for f in per_seed] for per_seed in grid]
        scored = [[_predictions(f.test_ids, f.test_proba) for f in per_seed] for per_seed in grid]
    joint = [m for per_fold in metrics for m in per_fold]
    paths = [str(r.path) for per_fold in grid for r in per_fold]
    if cell["kind"] == "joint" and rule not in JOINT_RULES:
        cell["weights"] = {m: float(np.mean([j["weights"][m] for j in joint])) for m in modalities}
    if any(j["accuracy"] is None for j in joint):
        cell.update(status="n/a", note="no test video has " + "+".join(modalities) + " features")
        return cell
    key = "per_seed" if len(folds) == 1 else "per_run"
    ids, P = _pooled(scored, len(seeds))
    y = np.array([folds[0].label[i] for i in ids], dtype=np.int64)
    dist = stats.bootstrap(y, P, len(folds[0].class_names))
    scored = P >= 0
    n_scored = int(scored.any(axis=0).sum())
    correct = float(np.mean(((P == y[None, :]) & scored).sum(axis=1)))  # mean over seeds of the right answers
    accuracy_ci = stats.exact_interval(correct, n_scored)
    cell.update({
        **{m: run_stats([j[m] for j in joint], key) for m in METRICS},
        "n_test": len(ids),
        "ci95": accuracy_ci,
        "ci95_by_metric": {m: accuracy_ci if m == "accuracy" else stats.interval(dist[m]) for m in METRICS},
        "per_class_recall": _mean_recall([j["per_class_recall"] for j in joint], folds[0].class_names),
        "confusion_matrix_sum": np.sum([j["confusion_matrix"] for j in joint], axis=0).astype(int).tolist(),
        "runs": paths,
    })
    cell["_scored"] = (ids, P)  # for the significance tests; dropped before the table is returned
    return cell


def _single_scores(trained: dict, seeds: list[int]) -> dict:
    """(modality, head) -> (ids, pooled predictions) of every single modality that trained."""
    out = {}
    for key, entry in trained.items():
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
        means = {metric: float(np.mean([metric_from_confusion(confusion_matrix(y, p, k), metric) for p in single]))
                 for metric in METRICS}
        candidates.append({"modality": m, "means": means, "p": {metric: stats.paired_p(d_j[metric], d_s[metric])
                                                                 for metric in METRICS},
                           "y": y, "joint": joint, "single": single})
    if not candidates:
        return
    best = {metric: max(candidates, key=lambda c: c["means"][metric]) for metric in METRICS}
    top = best["accuracy"]
    cell["best_single"] = top["modality"]
    cell["best_single_by_metric"] = {metric: {"modality": c["modality"], "mean": c["means"][metric],
                                              "n_common": len(c["y"])} for metric, c in best.items()}
    cell["p_joint_vs_best_single"] = top["p"]["accuracy"]
    cell["p_by_metric"] = {metric: c["p"][metric] for metric, c in best.items()}
    y = top["y"]
    cell["mcnemar_vs_best_single"] = [{"seed_index": s, **stats.mcnemar_exact(top["joint"][s] == y, top["single"][s] == y)}
                                      for s in range(len(top["joint"]))]


def build_table(work, labels: Labels, seeds: list[int], head: str = "lstm", rule: str = "weighted",
                dataset: str = "other", extra_rows: tuple[Row, ...] = (), cv="fixed", metric: str = "accuracy",
                jobs: int = 1, manifest=None) -> dict:
    """Train or reuse every run, fuse, and return the table as a JSON-ready dict (fractions).

    `cv`: "fixed" (the manifest's split), K or "groups" (`classify.protocol`); `metric`: the
    headline of the Markdown (the JSON has all three); `jobs`: single runs trained at a time
    (`classify.train.train_runs`; 0 = one per core); `manifest`: its folder names a dataset
    whose published numbers are not shown."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    t0 = time.perf_counter()
    cv = protocol.parse_cv(cv)
    folds = protocol.fold_labels(labels, cv)
    rows = SEED_ROWS + tuple(extra_rows)
    store = FeatureStore(work)
    trained = _train_singles(work, folds, head, seeds, store, rows, jobs)
    numbers = published.accuracy(dataset)
    mismatch = published.class_mismatch(dataset, labels.class_names)
    if mismatch:
        log.warning("%s", mismatch)
        numbers = None
    cells = []
    joint_data = _joint_data(work, folds, seeds, rows)
    for row in rows:
        for column, modalities in row.cells.items():
            cell = _cell(row, column, modalities, head, rule, seeds, trained, work, folds, store, joint_data)
            if numbers is not None and row.published:
                cell["published_accuracy_percent"] = numbers.get(row.name, {}).get(column)
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
        "dataset": dataset, "dataset_name": published.display_name(dataset, labels.class_names, manifest),
        "published_warning": mismatch, "work": os.fspath(work), "seeds": seeds, "head": head,
        "protocol": protocol.describe(cv, len(folds)),
        "folds": [f.tag for f in folds] if cv != protocol.FIXED else [],
        "held_out_groups": held_out_groups(folds) if cv == protocol.GROUPS else None,
        "metric": metric,
        "leaking_groups": describe_leaks(leaks) if leaks else None,
        "fixed_heads": {r.name: r.head for r in rows if r.head},
        "rule": rule, "class_names": labels.class_names, "n_test": n_test,
        "units": "fractions (0..1) for ours; published_accuracy_percent in percent",
        "published_source": published.SOURCE if numbers is not None else None,
        "intervals": {"ci95": f"{stats.ACCURACY_INTERVAL} 95 % interval of the test accuracy: the number of test "
                              "videos right (mean over seeds; in cross-validation each seed pools all folds) out of "
                              "the videos scored; valid at any test size",
                      "accuracy": stats.ACCURACY_INTERVAL,
                      "ci95_by_metric": "accuracy: as ci95; balanced_accuracy and macro_f1: percentile bootstrap 95 % "
                                        "interval over the test videos (videos resampled with replacement, the metric "
                                        "of every run on each resample averaged over the runs)",
                      "n_boot": stats.N_BOOT, "seed": stats.SEED},
        "small_test_warning": stats.small_test_warning(n_test),
        "significance": {"p_joint_vs_best_single": "one-sided paired bootstrap over the test videos both models scored "
                                                   "(same resamples as ci95): (1 + #resamples with joint - best single "
                                                   "<= 0) / (n_boot + 1), on accuracy (p_by_metric: each metric); "
                                                   "best single = the fused modality with the highest mean",
                         "mcnemar_vs_best_single": "exact McNemar test (two-sided) per seed on the same videos",
                         "alpha": stats.ALPHA},
        "rows": [{"name": r.name, "cells": {c: list(m) for c, m in r.cells.items()}, "head": r.head,
                  "in_published_table": r.published} for r in rows],
        "columns": describe_rows(rows),
        "cells": cells,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _joint_data(work, folds, seeds, rows) -> dict:
    """The loaded caches of the joint rows' modalities, once for all their rules, when some run of
    theirs has to be trained (none when every run is reused, or a cache is missing: the cell says so)."""
    from classify.joint_run import pending

    out = {}
    for row in rows:
        if row.rule in JOINT_RULES:
            for mods in row.cells.values():
                if tuple(mods) not in out and pending(work, folds, list(mods), row.rule, seeds):
                    try:
                        out[tuple(mods)] = JointData(work, list(mods))
                    except (cache.CacheError, ValueError):
                        pass
    return out


def held_out_groups(folds: list[Labels]) -> list[str]:
    """The group each leave-one-group-out fold tests."""
    return [next(iter({f.group[i] for i in f.ids("test")})) for f in folds]


