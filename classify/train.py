"""Train one head on one modality's cached features.

    python -m classify.train --modality rgb --head lstm [--seed 0] [--work W] [--manifest M] [--force]
                             [--cv fixed|K|groups]

Trains on the manifest's train split, stops early on its val split, and scores val and test.
Only videos that have the modality take part (a video without audio is in no audio run); the
counts are in metrics.json. Each run writes, atomically, `W/runs/<modality>-<head>-seed<S>/`:

    settings.json     modality, head, seed, every hyperparameter (the head's `get_params()`
                      but `verbose`), the cache's fingerprint, a digest of the manifest's
                      (id, label, split) rows, the class names
    metrics.json      test metrics at the top (accuracy, macro_f1, balanced_accuracy,
                      per_class_recall, confusion_matrix, class_names, n), "val" likewise,
                      "counts" (videos per split with and without the modality), "epochs"
    predictions.npz   val_ids, val_proba, val_y, test_ids, test_proba, test_y
    model.joblib      the fitted head (joblib.load gives the estimator back)

A run whose folder holds the same settings is reused, not trained again; `--force` retrains.
`--cv K|groups` trains one run per cross-validation fold instead (`classify.protocol`), in
`W/runs/<modality>-<head>-seed<S>-cv<K>f<k>/` (`-cvgroupsf<k>`), each reused the same way.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from classify import protocol
from classify.data import SPLITS, FeatureStore, Labels
from classify.heads import HEADS, LSTMHead, make_head
from classify.metrics import classification_metrics
from classify.runs import DEFAULT_MANIFEST, DEFAULT_WORK, read_json, write_json
from extract import cli
from extract.durable import atomic_dir
from extract.layout import as_work
from features import cache
from features import modalities as registry

log = logging.getLogger(__name__)
RUN_FORMAT = 1
# Head parameters that change what is printed, not what is trained: left out of a run's settings.
NOT_SETTINGS = ("verbose",)


class RunResult(NamedTuple):
    path: Path
    metrics: dict
    class_names: list[str]
    val_ids: list[str]
    val_proba: np.ndarray
    test_ids: list[str]
    test_proba: np.ndarray
    reused: bool


def run_name(modality: str, head: str, seed: int, tag: str = "") -> str:
    """`rgb-lstm-seed0`; a cross-validation fold adds its tag: `rgb-lstm-seed0-cv5f2`."""
    return f"{modality}-{head}-seed{seed}" + (f"-{tag}" if tag else "")


def run_path(work, modality: str, head: str, seed: int, tag: str = "") -> Path:
    """`W/runs/<run_name>/`."""
    return as_work(work).run(run_name(modality, head, seed, tag))


def load_run(path) -> RunResult:
    path = Path(path)
    metrics = read_json(path / "metrics.json")
    with np.load(path / "predictions.npz", allow_pickle=False) as p:
        return RunResult(path, metrics, metrics["class_names"], p["val_ids"].tolist(), p["val_proba"],
                         p["test_ids"].tolist(), p["test_proba"], True)


def _settings(work, labels: Labels, modality: str, head_name: str, head) -> dict:
    params = {k: v for k, v in head.get_params().items() if k not in NOT_SETTINGS}
    settings = {"format": RUN_FORMAT, "modality": modality, "head": head_name, "seed": head.seed,
                "params": params, "cache": cache.fingerprint(work, modality),
                "manifest": labels.digest, "class_names": labels.class_names}
    if labels.tag:
        settings["fold"] = labels.tag  # a fold's digest already covers its splits; the tag names it
    return settings


def _no_training_features(work, modality: str, train_ids: list[str]) -> str:
    """Why a cache gives no training video, in words: every video recorded without the modality
    (no caption, no audio, ...), or a cache made from other videos."""
    recorded = cache.missing(work, modality)
    reasons: dict[str, int] = {}
    for vid in train_ids:
        if vid in recorded:
            reasons[recorded[vid]] = reasons.get(recorded[vid], 0) + 1
    text = f"no training video has {modality} features"
    if not reasons:
        return (f"{text}: the cache {cache.cache_path(work, modality)} holds other videos than the manifest's "
                "(made from another manifest?); run the feature stage on this manifest")
    common = max(reasons, key=reasons.get)
    text += f": {sum(reasons.values())} of {len(train_ids)} are recorded without them ({common!r})"
    if "caption" in common:
        text += ("; the manifest has no captions: give it a `text` column (extract.manifest folder reads a "
                 "<video>.txt beside each video), then run the feature stage for text again")
    return text


def train_run(work, labels: Labels | str, modality: str, head: str = "lstm", seed: int = 0,
              params: dict | None = None, store: FeatureStore | None = None, force: bool = False) -> RunResult:
    """Train (or reuse) `W/runs/<modality>-<head>-seed<S>/` and return its predictions.

    Raises `cache.CacheMissingError` when the modality has no cache.
    """
    if not isinstance(labels, Labels):
        labels = Labels.from_manifest(labels)
    estimator = make_head(head, seed=seed, **(params or {}))
    settings = _settings(work, labels, modality, head, estimator)
    final = run_path(work, modality, head, seed, labels.tag)
    if not force:
        reused = _reuse(final, settings)
        if reused is not None:
            return reused
    store = store or FeatureStore(work)
    feats = store.get(modality, estimator.max_steps if isinstance(estimator, LSTMHead) else None)
    row = {vid: i for i, vid in enumerate(feats.ids)}
    parts, counts = {}, {}
    for split in SPLITS:
        ids = labels.ids(split)
        have = [i for i in ids if i in row]
        idx = np.array([row[i] for i in have], dtype=np.int64)
        parts[split] = (have, idx, np.array([labels.label[i] for i in have], dtype=np.int64))
        counts[split] = {"with_features": len(have), "without": len(ids) - len(have)}
    train_ids, tr, y_tr = parts["train"]
    if not train_ids:
        raise cli.UserError(_no_training_features(work, modality, labels.ids("train")))
    _, va, y_va = parts["val"]
    k = len(labels.class_names)
    log.info("training %s on %d %s sequences (val %d, test %d)", run_name(modality, head, seed, labels.tag), len(tr), modality,
             len(va), len(parts["test"][1]))
    t = time.perf_counter()
    estimator.fit(feats.x[tr], feats.lengths[tr], y_tr, feats.x[va], feats.lengths[va], y_va, n_classes=k)
    fit_seconds = time.perf_counter() - t

    def proba(idx):
        return estimator.predict_proba(feats.x[idx], feats.lengths[idx]) if len(idx) else np.zeros((0, k))

    val_p, test_p = proba(va), proba(parts["test"][1])
    test_ids, _, y_te = parts["test"]
    metrics = classification_metrics(y_te, test_p.argmax(axis=1), labels.class_names)
    metrics["val"] = classification_metrics(y_va, val_p.argmax(axis=1), labels.class_names)
    metrics["counts"] = counts
    metrics["fit_seconds"] = round(fit_seconds, 2)
    if hasattr(estimator, "history_"):
        metrics["epochs"] = len(estimator.history_)
        metrics["best_epoch"] = estimator.best_epoch_
    import joblib

    with atomic_dir(final) as tmp:
        joblib.dump(estimator, tmp / "model.joblib")
        np.savez(tmp / "predictions.npz", val_ids=np.array(parts["val"][0], dtype=str), val_proba=val_p, val_y=y_va,
                 test_ids=np.array(test_ids, dtype=str), test_proba=test_p, test_y=y_te)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "settings.json", settings)
    return RunResult(final, metrics, labels.class_names, list(parts["val"][0]), val_p, list(test_ids), test_p, False)


def _reuse(final: Path, settings: dict) -> RunResult | None:
    """The run in `final` if it was made with exactly these settings, else None (train again)."""
    if (final / "settings.json").is_file() and (final / "predictions.npz").is_file():
        try:
            if read_json(final / "settings.json") == json.loads(json.dumps(settings)):
                log.debug("reusing %s", final)
                return load_run(final)
        except (OSError, ValueError, KeyError):
            pass  # unreadable: train again
    return None


def reused_run(work, labels: Labels, modality: str, head: str = "lstm", seed: int = 0,
               params: dict | None = None) -> RunResult | None:
    """What `train_run` would reuse for these arguments, or None when it would train."""
    estimator = make_head(head, seed=seed, **(params or {}))
    return _reuse(run_path(work, modality, head, seed, labels.tag), _settings(work, labels, modality, head, estimator))


def effective_jobs(jobs: int) -> int:
    """`jobs` worker processes; 0 (or less) means one per available core."""
    if jobs > 0:
        return jobs
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def train_runs(work, folds: list[Labels], modality: str, head: str = "lstm", seeds=(0,), params: dict | None = None,
               store: FeatureStore | None = None, jobs: int = 1) -> list[list[RunResult]]:
    """Every (fold, seed) run of one modality, as `[fold][seed]`: reusable runs are read back, the
    others trained, `jobs` at a time.

    The runs of one modality are independent, and each head trains on one torch thread, so on a
    2-core machine two of them in parallel take about the time of one. Workers are processes
    (joblib's loky), not threads: torch's random generator is process-wide, so threads would
    make a seed's result depend on its neighbour. The features are loaded and time-pooled once,
    here, and memory-mapped into the workers (joblib dumps arrays above 1 MB once per call), so a
    worker costs the training copy of its fold, not another cache. A run trained in a worker
    is the same run, bit for bit, as one trained here (tests/test_protocol.py).
    """
    out: list[list[RunResult | None]] = [[None] * len(seeds) for _ in folds]
    pending = []
    for f, fold in enumerate(folds):
        for s, seed in enumerate(seeds):
            out[f][s] = reused_run(work, fold, modality, head, seed, params)
            if out[f][s] is None:
                pending.append((f, s))
    store = store or FeatureStore(work)
    jobs = min(effective_jobs(jobs), len(pending))
    if jobs <= 1:
        for f, s in pending:
            out[f][s] = train_run(work, folds[f], modality, head, seeds[s], params, store)
        return out
    from joblib import Parallel, delayed

    estimator = make_head(head, **(params or {}))
    max_steps = estimator.max_steps if isinstance(estimator, LSTMHead) else None
    feats = store.get(modality, max_steps)
    log.info("training %d %s runs, %d at a time", len(pending), modality, jobs)
    results = Parallel(n_jobs=jobs, backend="loky", max_nbytes="1M", mmap_mode="r")(
        delayed(_train_in_worker)(work, folds[f], modality, head, seeds[s], params, max_steps, feats)
        for f, s in pending)
    for (f, s), r in zip(pending, results):
        out[f][s] = r
    return out


def _train_in_worker(work, labels: Labels, modality: str, head: str, seed: int, params, max_steps, feats) -> RunResult:
    return train_run(work, labels, modality, head, seed, params, FeatureStore.holding(work, modality, max_steps, feats))


def percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def parser():
    p = cli.parser("python -m classify.train", __doc__.split("\n\n")[0])
    p.add_argument("--modality", required=True,
                   help="any modality with a feature cache in WORK/features/ (registered: "
                        + ", ".join(registry.names()) + ")")
    p.add_argument("--head", default="lstm", choices=HEADS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=DEFAULT_WORK)
    p.add_argument("--manifest", default=DEFAULT_MANIFEST)
    p.add_argument("--force", action="store_true", help="train again even if the run exists")
    p.add_argument("--cv", default="fixed", help="fixed (the manifest's split, default), K (group-aware "
                                                 "K-fold) or groups (leave-one-group-out); see classify.protocol")
    return p


def _main(args) -> int:
    cv = protocol.parse_cv(args.cv)
    banner = cache.random_weights_banner(args.work, [args.modality])
    if banner:
        print(banner + "\n")
    folds = protocol.fold_labels(Labels.from_manifest(args.manifest), cv)
    store = FeatureStore(args.work)
    runs = [train_run(args.work, fold, args.modality, args.head, args.seed, store=store, force=args.force)
            for fold in folds]
    for fold, run in zip(folds, runs):
        m = run.metrics
        print(f"{args.modality} {args.head} seed {args.seed}{' fold ' + fold.tag if fold.tag else ''}: test accuracy "
              f"{percent(m['accuracy'])}, macro-F1 {percent(m['macro_f1'])} on {m['n']} videos (val accuracy "
              f"{percent(m['val']['accuracy'])}); {run.path}{' (reused)' if run.reused else ''}")
    if len(runs) > 1:
        accs = [r.metrics["accuracy"] for r in runs]
        print(f"test accuracy over {len(runs)} folds ({protocol.title(cv, len(runs))}): "
              f"{percent(float(np.mean(accs)))} ± {100 * float(np.std(accs, ddof=1)):.2f}")
    return cli.EXIT_OK


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
