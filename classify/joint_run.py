"""Joint-fusion runs: one joint head (`classify.joint`: early, tfn, xattn) trained on the
modalities' cached features together, written as a fusion run folder.

`classify.fuse --rule early|tfn|xattn` comes here. The head is fitted on the train split, early
stopped (and its best epoch kept) on the validation split, and the test split is only scored,
like every other run. Its hyper-parameters are the head's defaults (the `__init__` arguments of
`classify.joint`'s classes: the one place they are set, with the reasons) unless `params`
overrides some (`classify.fuse --set hidden=64`); the run records all of them.

Missing modalities come from the caches: a video absent from a modality's cache (recorded there
as missing, or never extracted) has length 0 for it, and the head puts its learned "absent"
vector there; nothing is zero-filled as data. A video with none of the modalities cannot be
scored and is left out (counted). The test split's counts are in metrics.json (`test_missing`,
`test_without_any`) and printed by `classify.fuse` ("test videos without: audio 12, text 40").

The folder `W/runs/fuse-<m1>+<m2>+...-<rule>[-seed<S>][-<fold>]/` (no head part: a joint rule has
no per-modality heads) holds what a late-fusion folder holds, plus the head itself as data:

    metrics.json      "joint" (test metrics, rule, val_accuracy, epochs, best_epoch, fit_seconds,
                      params), "per_modality" (the same head given only that modality, on the
                      test videos that have it), "test_missing", "test_without_any", "counts",
                      "class_names", "head": null, "seed"
    settings.json     rule, modalities, params, each cache's fingerprint, the manifest digest,
                      class names, seed (a folder with the same settings is reused, not retrained)
    predictions.npz   test_ids, test_proba, test_y, val_ids, val_proba, val_y
    joint.json, joint.npz   the fitted head (`classify.joint_state`; no pickle)
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from classify.data import SPLITS, Labels
from classify.joint import JOINT_RULES, gather, make_joint
from classify.joint_state import joint_from_state, joint_state
from classify.metrics import classification_metrics
from classify.runs import read_json, write_json
from extract.durable import atomic_dir
from extract.layout import as_work
from features import cache

log = logging.getLogger(__name__)
RUN_FORMAT = 1


class JointData:
    """The modalities' loaded caches, shared by every fold and seed of a joint rule."""

    def __init__(self, work, modalities: list[str]):
        t = time.perf_counter()
        self.features = {m: cache.load(work, m) for m in modalities}
        self.seconds = time.perf_counter() - t
        self._rows = {m: set(f.ids) for m, f in self.features.items()}

    def split(self, labels: Labels, split: str) -> tuple[list[str], dict, np.ndarray]:
        """(ids, X, y) of the split's videos that have at least one of the modalities."""
        ids = [i for i in labels.ids(split) if any(i in rows for rows in self._rows.values())]
        return ids, gather(self.features, ids), np.array([labels.label[i] for i in ids], dtype=np.int64)

    def without(self, labels: Labels, split: str) -> tuple[dict[str, int], int]:
        """({modality: split videos lacking it}, split videos lacking all of them)."""
        ids = labels.ids(split)
        per = {m: sum(i not in rows for i in ids) for m, rows in self._rows.items()}
        return per, sum(all(i not in rows for rows in self._rows.values()) for i in ids)


def without_line(metrics: dict) -> str:
    """'test videos without: audio 12, text 40' (or '... without: none'), from a run's metrics."""
    parts = [f"{m} {n}" for m, n in metrics.get("test_missing", {}).items() if n]
    line = "test videos without: " + (", ".join(parts) if parts else "none")
    if metrics.get("test_without_any"):
        line += f"; {metrics['test_without_any']} without any of them (not scored)"
    return line


def settings_for(work, labels: Labels, modalities: list[str], rule: str, seed: int, params: dict | None) -> dict:
    head = make_joint(rule, seed=seed, **(params or {}))
    settings = {"format": RUN_FORMAT, "rule": rule, "modalities": list(modalities), "seed": seed,
                "params": {k: v for k, v in head.get_params().items() if k != "verbose"},
                "caches": {m: cache.fingerprint(work, m) for m in modalities},
                "manifest": labels.digest, "class_names": labels.class_names}
    if labels.tag:
        settings["fold"] = labels.tag
    return settings


def load_head(path):
    """The fitted joint head stored in a run folder (or bundle): joint.json + joint.npz."""
    with np.load(Path(path) / "joint.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return joint_from_state(read_json(Path(path) / "joint.json"), arrays)


def _reuse(final: Path, settings: dict):
    from classify.fuse import FuseResult

    try:
        if read_json(final / "settings.json") == json.loads(json.dumps(settings)):
            metrics = read_json(final / "metrics.json")
            with np.load(final / "predictions.npz", allow_pickle=False) as p:
                log.debug("reusing %s", final)
                return FuseResult(final, metrics, p["test_ids"].tolist(), p["test_proba"])
    except (OSError, ValueError, KeyError):
        pass  # absent or unreadable: train again
    return None


def _scores(head, ids, X, y, labels: Labels) -> tuple[np.ndarray, dict]:
    k = len(labels.class_names)
    proba = head.predict_proba(X) if ids else np.zeros((0, k))
    return proba, classification_metrics(y, proba.argmax(axis=1) if len(proba) else [], labels.class_names)


def _per_modality(head, ids, X, y, labels: Labels) -> dict:
    """What the head makes of each modality alone, on the test videos that have it."""
    out = {}
    for m, (x, lengths) in X.items():
        has = np.flatnonzero(lengths > 0)
        if not len(has):
            out[m] = {"accuracy": None, "macro_f1": None, "n": 0}
            continue
        p = head.predict_proba({m: (x[has], lengths[has])})
        s = classification_metrics(y[has], p.argmax(axis=1), labels.class_names)
        out[m] = {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"], "n": int(len(has))}
    return out


def run_joint(work, labels: Labels, modalities: list[str], rule: str, seed: int = 0, params: dict | None = None,
              data: JointData | None = None, force: bool = False):
    """Train (or reuse) one joint run; returns `classify.fuse.FuseResult`."""
    from classify.fuse import FuseResult, fuse_name

    if rule not in JOINT_RULES:
        raise ValueError(f"unknown joint rule {rule!r}; choose one of {', '.join(JOINT_RULES)}")
    if len(set(modalities)) != len(modalities) or len(modalities) < 2:
        raise ValueError(f"a joint rule needs two or more distinct modalities, got {modalities}")
    settings = settings_for(work, labels, modalities, rule, seed, params)
    final = as_work(work).run(fuse_name(modalities, "lstm", rule, seed, labels.tag))
    if not force:
        reused = _reuse(final, settings)
        if reused is not None:
            return reused
    data = data or JointData(work, modalities)
    parts = {s: data.split(labels, s) for s in SPLITS}
    (train_ids, X, y), (val_ids, Xv, yv), (test_ids, Xt, yt) = parts["train"], parts["val"], parts["test"]
    if not train_ids:
        raise ValueError(f"no training video has any of {', '.join(modalities)}")
    head = make_joint(rule, seed=seed, **(params or {}))
    log.info("training %s on %d videos (val %d, test %d)", final.name, len(train_ids), len(val_ids), len(test_ids))
    t = time.perf_counter()
    head.fit(X, y, Xv if val_ids else None, yv if val_ids else None, n_classes=len(labels.class_names))
    fit_seconds = time.perf_counter() - t
    val_p, val_m = _scores(head, val_ids, Xv, yv, labels)
    test_p, joint = _scores(head, test_ids, Xt, yt, labels)
    missing, none = data.without(labels, "test")
    joint.update({"rule": rule, "val_accuracy": val_m["accuracy"], "epochs": len(head.history_),
                  "best_epoch": head.best_epoch_, "fit_seconds": round(fit_seconds, 2), "params": settings["params"]})
    metrics = {"per_modality": _per_modality(head, test_ids, Xt, yt, labels), "joint": joint,
               "class_names": labels.class_names, "head": None, "seed": seed,
               "test_missing": missing, "test_without_any": none,
               "counts": {s: {"scored": len(parts[s][0]), "without_any": data.without(labels, s)[1]} for s in SPLITS}}
    desc, arrays = joint_state(head)
    with atomic_dir(final) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "settings.json", settings)
        np.savez(tmp / "predictions.npz", test_ids=np.array(test_ids, dtype=str), test_proba=test_p, test_y=yt,
                 val_ids=np.array(val_ids, dtype=str), val_proba=val_p, val_y=yv)
        write_json(tmp / "joint.json", desc)
        np.savez(tmp / "joint.npz", **arrays)
    return FuseResult(final, metrics, list(test_ids), test_p)


def _reusable(work, fold: Labels, modalities: list[str], rule: str, seed: int, params: dict | None):
    return _reuse(as_work(work).run(_name(modalities, rule, seed, fold.tag)),
                  settings_for(work, fold, modalities, rule, seed, params))


def pending(work, folds: list[Labels], modalities: list[str], rule: str, seeds, params: dict | None = None) -> bool:
    """Whether some (fold, seed) run of this joint rule would be trained (not reused)."""
    return any(_reusable(work, f, modalities, rule, s, params) is None for f in folds for s in seeds)


def joint_runs(work, folds: list[Labels], modalities: list[str], rule: str, seeds, params: dict | None = None,
               data: JointData | None = None) -> list[list]:
    """Every (fold, seed) run of one joint rule as `[fold][seed]`; the caches are loaded once, and
    only when some run has to be trained."""
    out = []
    for fold in folds:
        row = []
        for seed in seeds:
            run = _reusable(work, fold, modalities, rule, seed, params)
            if run is None:
                data = data or JointData(work, modalities)
                run = run_joint(work, fold, modalities, rule, seed, params, data, force=True)
            row.append(run)
        out.append(row)
    return out


def _name(modalities, rule, seed, tag) -> str:
    from classify.fuse import fuse_name

    return fuse_name(modalities, "lstm", rule, seed, tag)
