"""Why the manifest has groups: a classifier scores by recognising the group, not the emotion.

    python -m benchmarks.leakage [--groups 60] [--per-group 5] [--out DIR] [--head lstm]

A generated dataset where every group (a publisher, a speaker) has its own look (a feature
offset of its own, as a person's face, room and camera give every video of theirs) and one
label for all its videos, and nothing else tells the classes apart. The same head is trained:

* on a random 60/20/20 split (videos of one group on both sides), scored on its test split;
* on the builder's group-aware split (`extract.manifest.assign_splits` with the group column);
* with `--cv 5` over all videos, without groups (plain stratified folds) and with them.

With groups leaking, the head "recognises the person" and scores far above chance; kept whole,
it falls to chance (1/3): the random-split number measured nothing about emotions. The cache is
written as the `rgb` modality (synthetic, marked random weights), i.e. what an RGB head sees.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np

from classify import protocol
from classify.data import FeatureStore, Labels
from classify.train import train_run
from extract.manifest import Video, assign_splits, write_manifest
from features import cache

CLASSES = ("negative", "neutral", "positive")


def leaky_videos(groups: int, per_group: int) -> list[Video]:
    """Group g holds `per_group` videos, all of class g mod 3; no split yet."""
    return [Video(id=f"g{g:03d}/v{k}", path=f"videos/g{g:03d}_v{k}.mp4", label=CLASSES[g % len(CLASSES)],
                  group=f"g{g:03d}") for g in range(groups) for k in range(per_group)]


def write_leaky_cache(work, videos: list[Video], dim: int = 64, steps: int = 4, look: float = 3.0, seed: int = 0) -> Path:
    """`W/features/rgb.h5`: each video = its group's offset (look x N(0, 1) per feature) + noise per step."""
    rng = np.random.default_rng(seed)
    names = sorted({v.group for v in videos})
    offsets = {g: look * rng.standard_normal(dim).astype(np.float32) for g in names}
    data = np.concatenate([offsets[v.group] + rng.standard_normal((steps, dim)).astype(np.float32) for v in videos])
    attrs = {"backbone": "synthetic-groups", "weights": "random", "checkpoint": None, "sha256": "random",
             "synthetic": True, "videos": len(videos), "signal": False, "seed": seed}
    return cache.write_consolidated(cache.cache_path(work, "rgb"), [v.id for v in videos],
                                    np.full(len(videos), steps), dim, iter([data]), {}, attrs,
                                    source_digest=f"leakage-{len(videos)}-{dim}-{steps}-{look}-{seed}")


def _accuracy(work, folds: Labels | list[Labels], head: str, seed: int, store: FeatureStore) -> float:
    """Test accuracy pooled over the folds (one `Labels`: its test split)."""
    right = total = 0
    for fold in folds if isinstance(folds, list) else [folds]:
        run = train_run(work, fold, "rgb", head, seed, store=store)
        y = np.array([fold.label[i] for i in run.test_ids])
        right += int((run.test_proba.argmax(axis=1) == y).sum())
        total += len(y)
    return right / total


def demonstrate(out, groups: int = 60, per_group: int = 5, head: str = "lstm", seed: int = 0) -> dict:
    """Train the head under the four protocols; returns {protocol: test accuracy}."""
    out = Path(out)
    videos = leaky_videos(groups, per_group)
    results = {}
    # a random split: the published way, blind to groups (the group column is put back afterwards)
    random_split = [dataclasses.replace(v, group=g) for v, g in
                    zip(assign_splits([dataclasses.replace(v, group=None) for v in videos], seed=seed),
                        (v.group for v in videos))]
    cases = {"random split": random_split, "group-aware split": assign_splits(videos, seed=seed)}
    for name, split_videos in cases.items():
        work = out / name.replace(" ", "-")
        shutil.rmtree(work, ignore_errors=True)
        write_leaky_cache(work, split_videos, seed=seed)
        manifest = write_manifest(work / "manifest.csv", split_videos)
        labels = Labels.from_manifest(manifest)
        store = FeatureStore(work)
        results[name] = _accuracy(work, labels, head, seed, store)
        if name == "random split":
            blind = labels._replace(group=None)  # plain stratified folds, videos of a group on both sides
            results["5-fold, groups ignored"] = _accuracy(work, protocol.fold_labels(blind, 5), head, seed, store)
        else:
            results["5-fold, group-aware"] = _accuracy(work, protocol.fold_labels(labels, 5), head, seed, store)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leakage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=60)
    parser.add_argument("--per-group", type=int, default=5)
    parser.add_argument("--head", default="lstm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="work/leakage")
    args = parser.parse_args(argv)
    results = demonstrate(args.out, args.groups, args.per_group, args.head, args.seed)
    print(f"{args.groups} groups x {args.per_group} videos, label constant within a group, each group its own look; "
          f"{args.head} head on the group-look features (chance: {100 / len(CLASSES):.1f} %):")
    for name, acc in results.items():
        print(f"  {name:<24} test accuracy {100 * acc:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
