"""What a classifier is trained on: the manifest's labels and splits, and the cached features.

`Labels` is read from a manifest (or made by `classify.protocol` for one cross-validation fold);
`FeatureStore` holds one modality's loaded cache at a time. Training, protocols, fusion, the
table and export all start from these two, so they live apart from any of them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import NamedTuple

from classify.heads import time_pool
from extract.layout import as_work
from features import cache

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


class Labels(NamedTuple):
    """What the classifiers need from a manifest (or one cross-validation fold of it)."""
    class_names: list[str]
    label: dict[str, int]   # id -> class index
    split: dict[str, str]   # id -> train / val / test
    digest: str             # changes when any (id, label, split) changes
    group: dict[str, str] | None = None  # id -> group, for the videos that have one
    tag: str = ""           # run-name suffix of a cross-validation fold ("cv5f2"); "" for the manifest's split

    @classmethod
    def from_manifest(cls, path) -> "Labels":
        from extract.manifest import class_names, read_manifest

        videos = read_manifest(path)
        names = class_names(videos)
        label = {v.id: names.index(v.label) for v in videos}
        split = {v.id: v.split for v in videos}
        return cls(names, label, split, split_digest(videos_rows(names, label, split)),
                   {v.id: v.group for v in videos if v.group})

    def with_splits(self, split: dict[str, str], tag: str) -> "Labels":
        """The same videos and classes under other splits (a fold); the digest follows the splits."""
        label = {i: self.label[i] for i in split}
        return self._replace(label=label, split=dict(split), tag=tag,
                             digest=split_digest(videos_rows(self.class_names, label, split)))

    def ids(self, split: str) -> list[str]:
        return [i for i, s in self.split.items() if s == split]


def videos_rows(names: list[str], label: dict[str, int], split: dict[str, str]) -> list[tuple[str, str, str]]:
    return sorted((i, names[label[i]], split[i]) for i in split)


def split_digest(rows: list[tuple[str, str, str]]) -> str:
    """16 hex digits of the sorted (id, label, split) rows: what a run's reuse depends on."""
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


class FeatureStore:
    """Holds one modality's loaded cache at a time (plus its time-pooled copies) for many runs."""

    def __init__(self, work):
        self.work = as_work(work)
        self.modality: str | None = None
        self._variants: dict = {}

    @classmethod
    def holding(cls, work, modality: str, max_steps: int | None, features: cache.Features) -> "FeatureStore":
        """A store that already holds `features` (one modality, time-pooled to `max_steps`): what
        `classify.train.train_runs`' worker processes get, the arrays memory-mapped from the parent's."""
        store = cls(work)
        store.modality, store._variants = modality, {max_steps: features}
        return store

    def get(self, modality: str, max_steps: int | None = None) -> cache.Features:
        if modality != self.modality:
            self._variants = {}  # drop the previous modality before loading the next one
            self.modality = None
            t = time.perf_counter()
            self._variants[None] = cache.load(self.work, modality)
            self.modality = modality
            log.info("loaded %s features %s in %.1f s", modality, self._variants[None].x.shape, time.perf_counter() - t)
        if max_steps not in self._variants:
            raw = self._variants[None]
            x, lengths = time_pool(raw.x, raw.lengths, max_steps)
            self._variants[max_steps] = cache.Features(raw.ids, x, lengths)
        return self._variants[max_steps]
