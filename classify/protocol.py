"""Evaluation protocols: the manifest's fixed split, group-aware K-fold, leave-one-group-out.

A single random split scores one draw of test videos, and when a person (publisher, speaker,
session) has videos on both sides the classifier can score by recognising the person instead
of the emotion. Cross-validation tests every labelled video once, and keeps groups whole:

* `fixed` (default, as published): the manifest's train/val/test split; one fold.
* `K` (`--cv 5`): scikit-learn's `StratifiedGroupKFold(K, shuffle=True, random_state=seed)`
  over all labelled videos (the manifest's splits are ignored): fold k tests one K-th, classes
  as balanced as the groups allow. A video without a group is a group of its own, so without a
  group column this is a stratified K-fold over videos.
* `groups` (`--cv groups`): leave-one-group-out, one fold per group (IEMOCAP: its 5 sessions).

In both, the validation part (early stopping, fusion weights) is carved out of the fold's
training videos, also by whole groups: the first fold of a `StratifiedGroupKFold(4)` over them
(the published 3:1 train:val ratio), or of as many folds as there are training groups when there
are fewer than 4. The fold assignment uses its own fixed seed (`FOLD_SEED`), so every training
seed sees the same folds and a fold's runs are reused like any other run.

`fold_labels` returns one `Labels` per fold, whose `tag` (`cv5f2`, `cvgroupsf0`) suffixes the
run folders (`W/runs/rgb-lstm-seed0-cv5f2/`) and whose digest covers the fold's splits.
"""
from __future__ import annotations

import warnings

import numpy as np

from classify.data import Labels

FIXED = "fixed"
GROUPS = "groups"
FOLD_SEED = 0
VAL_PARTS = 4          # validation = 1/4 of a fold's training groups (train:val = 3:1, as published)
MAX_GROUP_FOLDS = 30   # leave-one-group-out beyond this is not what anyone wants (DMVER: 30,000 publishers)


def parse_cv(value) -> str | int:
    """`--cv` as given (None, "", "fixed", "groups", "5") -> "fixed" | "groups" | K (an int >= 2)."""
    if value is None or str(value).strip().lower() in ("", FIXED):
        return FIXED
    text = str(value).strip().lower()
    if text == GROUPS:
        return GROUPS
    try:
        k = int(text)
    except ValueError:
        raise ValueError(f"--cv {value!r}: give a number of folds K >= 2, 'groups' (leave-one-group-out) "
                         f"or 'fixed' (the manifest's split)") from None
    if k < 2:
        raise ValueError(f"--cv {k}: cross-validation needs at least 2 folds")
    return k


def describe(cv, n_folds: int) -> dict:
    """The `protocol` object of table.json: {"cv": "fixed" | K | "groups", "folds": n}."""
    return {"cv": cv, "folds": n_folds}


def title(cv, n_folds: int) -> str:
    """How the Markdown names the protocol."""
    if cv == FIXED:
        return "test split"
    if cv == GROUPS:
        return f"leave-one-group-out cross-validation, {n_folds} groups"
    return f"{cv}-fold group-aware cross-validation"


def leaking_groups(labels: Labels) -> dict[str, list[str]]:
    """Groups that the labels' own splits put in two or more splits: {group: splits}."""
    from extract.manifest import leaks_of

    return leaks_of((g, labels.split.get(vid, "")) for vid, g in (labels.group or {}).items())


def _group_keys(labels: Labels, ids: list[str]) -> list[str]:
    groups = labels.group or {}
    return [groups.get(i) or f"\0{i}" for i in ids]  # no group: a group of its own


def _stratified_group_folds(ids, labels: Labels, n_splits: int, seed: int) -> list[np.ndarray]:
    from sklearn.model_selection import StratifiedGroupKFold

    y = [labels.label[i] for i in ids]
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has fewer members than n_splits"
        return [test for _, test in cv.split(np.zeros(len(ids)), y, _group_keys(labels, ids))]


def _carve_val(train_ids: list[str], labels: Labels, seed: int) -> set[str]:
    """Whole groups of the training part, about a quarter of it, for validation."""
    n_groups = len(set(_group_keys(labels, train_ids)))
    if n_groups < 2:
        raise ValueError(f"a fold's training part has {n_groups} group: too few to carve a validation part "
                         f"out of it by group; use fewer folds or more groups")
    first = _stratified_group_folds(train_ids, labels, min(VAL_PARTS, n_groups), seed)[0]
    return {train_ids[j] for j in first}


def fold_labels(labels: Labels, cv, seed: int = FOLD_SEED) -> list[Labels]:
    """One `Labels` per fold (the manifest's own for `fixed`), each with train, val and test."""
    cv = parse_cv(cv)
    if cv == FIXED:
        return [labels]
    ids = list(labels.label)
    if cv == GROUPS:
        groups = labels.group or {}
        without = [i for i in ids if not groups.get(i)]
        if without:
            raise ValueError(f"--cv groups needs a group for every video; {len(without)} have none (e.g. {without[:3]}): "
                             f"add a group column (--group-regex, or the iemocap builder)")
        names = sorted(set(groups[i] for i in ids))
        if not 3 <= len(names) <= MAX_GROUP_FOLDS:
            raise ValueError(f"--cv groups makes one fold per group: {len(names)} groups here, it needs 3 to "
                             f"{MAX_GROUP_FOLDS}; use --cv K for many groups")
        tests = [np.array([j for j, i in enumerate(ids) if groups[i] == g]) for g in names]
        tag = "cvgroupsf{}"
    else:
        n_groups = len(set(_group_keys(labels, ids)))
        if n_groups < cv:
            raise ValueError(f"--cv {cv}: only {n_groups} groups (or videos) to deal into {cv} folds")
        tests = _stratified_group_folds(ids, labels, cv, seed)
        tag = f"cv{cv}f{{}}"
    folds = []
    for k, test in enumerate(tests):
        test_ids = {ids[j] for j in test}
        train_ids = [i for i in ids if i not in test_ids]
        val_ids = _carve_val(train_ids, labels, seed + 1 + k)
        split = {i: "test" if i in test_ids else "val" if i in val_ids else "train" for i in ids}
        folds.append(labels.with_splits(split, tag.format(k)))
    return folds
