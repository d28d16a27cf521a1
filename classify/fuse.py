"""Late fusion of per-modality class probabilities (and the entry to the joint heads).

    python -m classify.fuse --modalities rgb,flow,audio [--head lstm] [--rule weighted] [--seed 0]
                            [--work work/sample] [--manifest data/sample/manifest.csv] [--cv fixed|K|groups]
                            [--set NAME=VALUE ...]

`--rule early|tfn|xattn` trains one joint head on all the modalities' cached features instead
(`classify.joint_run`: same outputs, the head as joint.json + joint.npz, `--set` overriding its
hyper-parameters, the test videos' missing modalities printed); everything below is about the
late rules.

Uses the runs `W/runs/<modality>-<head>-seed<S>/` (training any that is missing first, so it
works straight after `make features`) and combines their probabilities video by video:

* `mean`: plain average of the modalities' probabilities;
* `weighted` (default): weighted average, the weights searched on a grid over the simplex
  (steps of 0.05; 0.1 beyond four modalities) to maximise validation accuracy, ties broken by
  the lower validation log-loss, then by closeness to equal weights;
* `stack`: logistic regression on the validation videos' log-probabilities (plus one
  "has this modality" column per modality), its regularisation chosen by stratified 5-fold
  cross-validation on the validation split (seeded). Its "weights" are each modality's share of
  the absolute coefficients: an importance, not a mixing weight.

Nothing is chosen on the test split: it is only scored. A video without some modality (no
audio track) is fused over the modalities it has, the weights renormalised over those (if they
all have weight 0, their plain mean); the joint score covers every split video with at least one
of the modalities, each modality's own score the videos that have it.

Writes `W/runs/fuse-<m1>+<m2>+...-<rule>/` (modalities in the order given, e.g.
`fuse-rgb+flow+audio-weighted`) for the default head and seed; another head or seed adds
`-<head>` and `-seed<S>` (`fuse-rgb+flow-mean-linear-seed3`) so runs never overwrite each other:
metrics.json

    {"per_modality": {"rgb": {"accuracy": .., "macro_f1": .., "n": ..}, ...},
     "joint": {"accuracy": .., "macro_f1": .., "weights": {"rgb": .., ...}, "rule": .., "n": ..,
               "val_accuracy": .., "balanced_accuracy": .., "per_class_recall": {..},
               "confusion_matrix": [[..]]},
     "class_names": [..], "head": .., "seed": ..}

(accuracies as fractions), plus predictions.npz (test_ids, test_proba, test_y), fusion.joblib
(the fitted `Fusion`, which `classify.export` puts in a model bundle) and settings.json.
With `--cv K|groups` every fold is fused (its runs and its fusion folder carry the fold's tag,
e.g. `fuse-rgb+flow-weighted-cv5f2`; see `classify.protocol`).
"""
from __future__ import annotations

import dataclasses
import itertools
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from classify import protocol
from classify.data import FeatureStore, Labels
from classify.heads import HEADS
from classify.joint import JOINT_RULES, make_joint
from classify.metrics import classification_metrics
from classify.runs import DEFAULT_MANIFEST, DEFAULT_WORK, write_json
from classify.train import RunResult, percent, train_run
from extract import cli
from extract.durable import atomic_dir
from extract.layout import as_work
from features import cache

RULES = ("mean", "weighted", "stack")
ALL_RULES = RULES + JOINT_RULES
EPS = 1e-6


class FuseResult(NamedTuple):
    path: Path
    metrics: dict
    test_ids: list[str]
    test_proba: np.ndarray


def aligned(runs: list[RunResult], split: str, order: list[str]) -> tuple[list[str], np.ndarray]:
    """Ids (in `order`) that at least one run scored, and probabilities `[M, n, K]` (NaN: absent)."""
    per_run = []
    for r in runs:
        ids, proba = (r.val_ids, r.val_proba) if split == "val" else (r.test_ids, r.test_proba)
        per_run.append(dict(zip(ids, proba)))
    ids = [i for i in order if any(i in d for d in per_run)]
    k = len(runs[0].class_names)
    P = np.full((len(runs), len(ids), k), np.nan)
    for m, d in enumerate(per_run):
        for j, vid in enumerate(ids):
            if vid in d:
                P[m, j] = d[vid]
    return ids, P


def combine(P: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted average over the modalities present for each video, renormalised.

    `P [M, n, K]` with NaN rows for absent modalities; `weights [M]` or `[G, M]` (a batch of
    weight vectors, giving `[G, n, K]`).
    """
    present = ~np.isnan(P[:, :, 0])                       # [M, n]
    Z = np.nan_to_num(P)
    W = np.atleast_2d(weights)[:, :, None] * present[None]  # [G, M, n]
    denom = W.sum(axis=1)                                   # [G, n]
    fallback = denom <= 0                                   # present modalities all weigh 0: plain mean
    if fallback.any():
        W = np.where(fallback[:, None, :], present[None].astype(float), W)
        denom = W.sum(axis=1)
    out = np.einsum("gmn,mnk->gnk", W, Z) / denom[:, :, None]
    return out[0] if np.ndim(weights) == 1 else out


def simplex_grid(m: int) -> np.ndarray:
    """All weight vectors of m non-negative multiples of 1/S summing to 1 (S = 20, or 10 beyond 4)."""
    steps = 20 if m <= 4 else 10
    rows = [c for c in itertools.product(range(steps + 1), repeat=m - 1) if sum(c) <= steps]
    grid = np.array([list(c) + [steps - sum(c)] for c in rows], dtype=float) / steps
    # start from the most uniform vectors so that ties keep the most even weighting
    return grid[np.argsort(((grid - 1 / m) ** 2).sum(axis=1), kind="stable")]


def _log_loss(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean negative log-likelihood per candidate: proba [G, n, K] -> [G]."""
    picked = np.take_along_axis(proba, y[None, :, None], axis=2)[:, :, 0]
    return -np.log(np.clip(picked, EPS, 1)).mean(axis=1)


def choose_weights(P_val: np.ndarray, y_val: np.ndarray) -> tuple[np.ndarray, float]:
    """Grid search on validation only: best accuracy, then lowest log-loss, then most uniform."""
    grid = simplex_grid(P_val.shape[0])
    if len(y_val) == 0:
        return np.full(P_val.shape[0], 1 / P_val.shape[0]), float("nan")
    acc, loss = np.empty(len(grid)), np.empty(len(grid))
    for a in range(0, len(grid), 64):
        fused = combine(P_val, grid[a:a + 64])
        acc[a:a + 64] = (fused.argmax(axis=2) == y_val[None]).mean(axis=1)
        loss[a:a + 64] = _log_loss(fused, y_val)
    best = np.lexsort((np.arange(len(grid)), loss, -acc))[0]
    return grid[best], float(acc[best])


def _stack_features(P: np.ndarray) -> np.ndarray:
    present = ~np.isnan(P[:, :, 0])
    logp = np.where(present[:, :, None], np.log(np.clip(np.nan_to_num(P), EPS, 1)), 0.0)
    return np.concatenate([np.concatenate(list(logp), axis=1), present.T.astype(float)], axis=1)


def _fit_stack(P_val, y_val, seed: int, k: int):
    """Logistic regression on validation log-probabilities; C by stratified CV on validation."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    X_val = _stack_features(P_val)
    counts = np.bincount(y_val, minlength=k)
    folds = int(min(5, counts[counts > 0].min())) if len(y_val) else 0
    if folds >= 2 and (counts > 0).sum() >= 2:
        model = LogisticRegressionCV(Cs=10, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                     scoring="neg_log_loss", max_iter=2000, class_weight="balanced")
    else:
        model = LogisticRegression(max_iter=2000, class_weight="balanced")
    model.fit(X_val, y_val)
    return model


def _stack_proba(model, P: np.ndarray, k: int) -> np.ndarray:
    proba = np.zeros((P.shape[1], k))
    if P.shape[1]:
        proba[:, model.classes_] = model.predict_proba(_stack_features(P))
    return proba


def stack(P_val, y_val, P_test, seed: int, k: int):
    """The stacking rule on validation, applied to test: (test proba, modality shares, val accuracy)."""
    fusion = fit_fusion(P_val, y_val, "stack", [f"m{i}" for i in range(P_val.shape[0])], seed, k)
    return fusion.apply(P_test), np.array(list(fusion.weights.values())), fusion.val_accuracy


@dataclasses.dataclass
class Fusion:
    """A late-fusion rule fitted on validation: `apply(P [M, n, K]) -> [n, K]` for the
    modalities in this order. `weights`: the mixing weights (mean, weighted) or, for stack, each
    modality's share of the absolute coefficients (an importance). Saved in model bundles."""
    rule: str
    modalities: list[str]
    weights: dict[str, float]
    n_classes: int
    val_accuracy: float = float("nan")
    model: object = None  # the stacking regression

    def apply(self, P: np.ndarray) -> np.ndarray:
        if self.rule == "stack":
            return _stack_proba(self.model, P, self.n_classes)
        return combine(P, np.array([self.weights[m] for m in self.modalities]))

    def state(self) -> tuple[dict, dict]:
        """(JSON-able description, arrays): the fusion without pickle, for model bundles; a stack
        rule's regression as its coef_, intercept_ and classes_."""
        desc = {"rule": self.rule, "modalities": list(self.modalities), "weights": dict(self.weights),
                "n_classes": int(self.n_classes), "val_accuracy": None if np.isnan(self.val_accuracy)
                else float(self.val_accuracy)}
        arrays = {}
        if self.model is not None:
            arrays = {"coef": self.model.coef_, "intercept": self.model.intercept_, "classes": self.model.classes_}
        return desc, arrays

    @classmethod
    def from_state(cls, desc: dict, arrays: dict) -> "Fusion":
        """The inverse of `state`; raises ValueError when the stack rule's arrays are missing."""
        from sklearn.linear_model import LogisticRegression

        if desc["rule"] not in RULES:
            raise ValueError(f"unknown fusion rule {desc['rule']!r}")
        model = None
        if desc["rule"] == "stack":
            if not {"coef", "intercept", "classes"} <= set(arrays):
                raise ValueError("the stack fusion lacks its coef, intercept or classes arrays")
            model = LogisticRegression()
            model.coef_, model.intercept_, model.classes_ = arrays["coef"], arrays["intercept"], arrays["classes"]
            model.n_features_in_ = model.coef_.shape[1]
        acc = desc.get("val_accuracy")
        return cls(desc["rule"], list(desc["modalities"]), {m: float(w) for m, w in desc["weights"].items()},
                   int(desc["n_classes"]), float("nan") if acc is None else float(acc), model)


def fit_fusion(P_val: np.ndarray, y_val: np.ndarray, rule: str, modalities: list[str], seed: int, k: int) -> Fusion:
    """Choose the fusion on the validation split only (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    m = len(modalities)
    if rule == "mean":
        weights = np.full(m, 1 / m)
        val_acc = float((combine(P_val, weights).argmax(1) == y_val).mean()) if len(y_val) else float("nan")
        return Fusion(rule, list(modalities), dict(zip(modalities, map(float, weights))), k, val_acc)
    if rule == "weighted":
        weights, val_acc = choose_weights(P_val, y_val)
        return Fusion(rule, list(modalities), dict(zip(modalities, map(float, weights))), k, val_acc)
    model = _fit_stack(P_val, y_val, seed, k)
    val_acc = float((_stack_proba(model, P_val, k).argmax(1) == y_val).mean())
    coef = np.abs(np.atleast_2d(model.coef_))[:, : m * k].reshape(-1, m, k).sum(axis=(0, 2))
    share = coef / coef.sum() if coef.sum() > 0 else np.full(m, 1 / m)
    return Fusion(rule, list(modalities), dict(zip(modalities, map(float, share))), k, val_acc, model)


def fuse_runs(runs: dict[str, RunResult], labels: Labels, rule: str = "weighted", seed: int = 0):
    """Fuse already trained runs. Returns (metrics dict, test ids, joint test probabilities, Fusion)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    names = list(runs)
    rs = [runs[m] for m in names]
    k = len(labels.class_names)
    val_ids, P_val = aligned(rs, "val", labels.ids("val"))
    test_ids, P_test = aligned(rs, "test", labels.ids("test"))
    y_val = np.array([labels.label[i] for i in val_ids], dtype=np.int64)
    y_test = np.array([labels.label[i] for i in test_ids], dtype=np.int64)
    fusion = fit_fusion(P_val, y_val, rule, names, seed, k)
    joint = fusion.apply(P_test)
    val_acc = fusion.val_accuracy
    metrics = classification_metrics(y_test, joint.argmax(axis=1) if len(joint) else [], labels.class_names)
    metrics.update({"weights": {m: round(float(w), 4) for m, w in fusion.weights.items()}, "rule": rule,
                    "val_accuracy": None if np.isnan(val_acc) else val_acc})
    per_modality = {m: {"accuracy": r.metrics["accuracy"], "macro_f1": r.metrics["macro_f1"], "n": r.metrics["n"]}
                    for m, r in zip(names, rs)}
    result = {"per_modality": per_modality, "joint": metrics, "class_names": labels.class_names}
    return result, test_ids, joint, fusion


def fuse_name(modalities, head: str = "lstm", rule: str = "weighted", seed: int = 0, tag: str = "") -> str:
    """`fuse-rgb+flow+audio-weighted` for the default head and seed 0; otherwise with suffixes
    (a cross-validation fold's tag last: `fuse-rgb+flow-weighted-seed1-cv5f2`)."""
    name = f"fuse-{'+'.join(modalities)}-{rule}"
    if head != "lstm":
        name += f"-{head}"
    if seed != 0:
        name += f"-seed{seed}"
    if tag:
        name += f"-{tag}"
    return name


def fuse(work, labels: Labels | str, modalities: list[str], head: str = "lstm", rule: str = "weighted",
         seed: int = 0, store: FeatureStore | None = None, params: dict | None = None) -> FuseResult:
    """Train (or reuse) each modality's run, fuse them, write the fusion folder. A joint rule
    (`JOINT_RULES`) trains one head on all the modalities instead (`classify.joint_run`; `head`
    is then unused and `params` overrides its hyper-parameters)."""
    if not isinstance(labels, Labels):
        labels = Labels.from_manifest(labels)
    if rule in JOINT_RULES:
        from classify.joint_run import run_joint

        return run_joint(work, labels, list(modalities), rule, seed, params)
    if len(set(modalities)) != len(modalities) or not modalities:
        raise ValueError(f"give distinct modalities, got {modalities}")
    import joblib

    store = store or FeatureStore(work)
    runs = {m: train_run(work, labels, m, head, seed, store=store) for m in modalities}
    result, test_ids, joint, fusion = fuse_runs(runs, labels, rule, seed)
    result.update({"head": head, "seed": seed})
    final = as_work(work).run(fuse_name(modalities, head, rule, seed, labels.tag))
    y_test = np.array([labels.label[i] for i in test_ids], dtype=np.int64)
    with atomic_dir(final) as tmp:
        write_json(tmp / "metrics.json", result)
        write_json(tmp / "settings.json", {"modalities": list(modalities), "head": head, "rule": rule, "seed": seed,
                                           "runs": {m: str(r.path) for m, r in runs.items()},
                                           "manifest": labels.digest})
        np.savez(tmp / "predictions.npz", test_ids=np.array(test_ids, dtype=str), test_proba=joint, test_y=y_test)
        joblib.dump(fusion, tmp / "fusion.joblib")
    return FuseResult(final, result, test_ids, joint)


def parser():
    p = cli.parser("python -m classify.fuse", __doc__.split("\n\n")[0])
    p.add_argument("--modalities", required=True, help="comma-separated, e.g. rgb,flow,audio")
    p.add_argument("--head", default="lstm", choices=HEADS)
    p.add_argument("--rule", default="weighted", choices=ALL_RULES,
                   help="late rules mean, weighted (default), stack; joint heads early, tfn, xattn")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a joint head's hyper-parameter (repeatable), e.g. --set hidden=64 --set max_epochs=20")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=DEFAULT_WORK)
    p.add_argument("--manifest", default=DEFAULT_MANIFEST)
    p.add_argument("--cv", default="fixed", help="fixed (the manifest's split, default), K (group-aware "
                                                 "K-fold) or groups (leave-one-group-out); see classify.protocol")
    return p


def parse_params(pairs: list[str]) -> dict:
    """`--set NAME=VALUE` pairs as a dict; VALUE read as JSON when it is (64, 0.1, null, true), else a string."""
    import json

    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise cli.UserError(f"--set {pair!r}: write NAME=VALUE, e.g. --set hidden=64")
        try:
            out[name.strip()] = json.loads(value)
        except ValueError:
            out[name.strip()] = value
    return out


def _main(args) -> int:
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    cv = protocol.parse_cv(args.cv)
    joint_rule = args.rule in JOINT_RULES
    params = parse_params(args.set)
    if params and not joint_rule:
        raise cli.UserError(f"--set applies to the joint rules ({', '.join(JOINT_RULES)}), not to {args.rule}")
    banner = cache.random_weights_banner(args.work, modalities)
    if banner:
        print(banner + "\n")
    folds = protocol.fold_labels(Labels.from_manifest(args.manifest), cv)
    if joint_rule:
        from classify.joint_run import joint_runs, without_line

        known = make_joint(args.rule).get_params()
        unknown = [k for k in params if k not in known or k in ("seed", "verbose")]
        if unknown:
            raise cli.UserError(f"--set {unknown[0]}: not a hyper-parameter of the {args.rule} head; it has "
                                + ", ".join(k for k in known if k not in ("seed", "verbose")))
        results = [per_fold[0] for per_fold in joint_runs(args.work, folds, modalities, args.rule, [args.seed], params)]
    else:
        store = FeatureStore(args.work)
        results = [fuse(args.work, fold, modalities, args.head, args.rule, args.seed, store) for fold in folds]
    width = max(len(x) for x in modalities + ["joint"])
    what = f"{args.rule} joint head" if joint_rule else f"{args.head} heads"
    for fold, res in zip(folds, results):
        m = res.metrics
        print(f"test accuracy ({what}, seed {args.seed}{', fold ' + fold.tag if fold.tag else ''}):")
        for name, pm in m["per_modality"].items():
            alone = "; the joint head given only this modality" if joint_rule else ""
            print(f"  {name:<{width}}  {percent(pm['accuracy']):>8}  macro-F1 {percent(pm['macro_f1']):>8}  "
                  f"({pm['n']} videos{alone})")
        j = m["joint"]
        how = (f"best epoch {j['best_epoch']} of {j['epochs']}, val accuracy {percent(j['val_accuracy'])}" if joint_rule
               else ", ".join(f"{k} {v:.2f}" for k, v in j["weights"].items()))
        print(f"  {'joint':<{width}}  {percent(j['accuracy']):>8}  macro-F1 {percent(j['macro_f1']):>8}  ({j['n']} videos; "
              f"{args.rule}: {how})")
        if joint_rule:
            print(f"  {without_line(m)}")
        print(f"wrote {res.path / 'metrics.json'}")
    if len(results) > 1:
        accs = [r.metrics["joint"]["accuracy"] for r in results]
        print(f"joint test accuracy over {len(results)} folds ({protocol.title(cv, len(results))}): "
              f"{percent(float(np.mean(accs)))} ± {100 * float(np.std(accs, ddof=1)):.2f}")
    return cli.EXIT_OK


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
