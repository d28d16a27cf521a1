"""The feature stage's core, shared by its two drivers: what to embed, and embedding it into shards.

`features.extract` (this process, DataLoader workers preparing inputs) and `features.distributed`
(batches of videos on Dask workers) both plan with `plan` and embed with `embed`, into the same
`cache.ShardWriter` layout, so a cache made by either is the same, and either resumes the other.
"""
from __future__ import annotations

import importlib.metadata
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from extract import records, workers
from extract.manifest import Video
from features import backbones, cache, modalities
from features.modalities import Missing, Modality

log = logging.getLogger(__name__)


class Inputs(torch.utils.data.Dataset):
    """One video's input -> model input, in a loader worker; problems come back as text.

    Each item is (id, prepared input or None, None | Missing | failure text)."""

    def __init__(self, work: Path, modality: str, videos: Sequence[Video], options: dict):
        self.work, self.modality, self.videos, self.options = work, modality, list(videos), options

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int):
        video = self.videos[i]
        spec = modalities.get(self.modality)  # in a fresh worker process: loads the registry, plugins too
        try:
            loaded = spec.source.load(self.work, video, self.options)
            if isinstance(loaded, Missing):
                return video.id, None, loaded
            if isinstance(loaded, np.ndarray) and loaded.dtype.kind == "f" and not np.isfinite(loaded).all():
                raise ValueError(f"its {spec.source.name} output holds NaN or infinite values")
            return video.id, spec.prepare(loaded), None
        except Exception as exc:  # one unreadable input is that video's failure, recorded by the driver
            return video.id, None, f"{type(exc).__name__}: {exc}".replace("\n", " ")


def _as_list(batch):
    return batch


def package_version() -> str:
    try:
        return importlib.metadata.version("dmver-bench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cache_attributes(spec: Modality, backbone: backbones.Backbone, work: Path, options: dict) -> dict:
    """What the cache records: the backbone's provenance, the input's settings, the version."""
    weights = "random" if backbone.checkpoint == "random" else "pretrained"
    return {**backbone.info(), "backbone": type(backbone.model).__name__, "weights": weights,
            **spec.source.settings(work, options), "options": options, "package_version": package_version()}


def empty_counts() -> dict:
    return {"done": 0, "skipped": 0, "redone": 0, "missing": 0, "failed": 0}


def plan(spec: Modality, writer: cache.ShardWriter, videos: Sequence[Video], work: Path, options: dict):
    """Which videos to embed: not done yet, or done from an input that has changed since (redone).

    Returns (counts, videos to embed, {id: provenance record}). A video whose input is absent is
    recorded as missing with the reason (failed upstream, not extracted); one whose stage output
    no longer fits its manifest row (its video changed, the stage was not run again) is a
    failure that names the stage to run."""
    failed_upstream: dict[str, str] = {}
    for name in spec.source.stages:
        for vid, reason in records.read_failures(work, name).items():
            failed_upstream.setdefault(vid, f"failed in {name}: {reason}")
    counts = empty_counts()
    todo, sources = [], {}
    for v in videos:
        if not spec.source.available(work, v):
            if writer.has_shard(v.id) and v.id not in failed_upstream:
                counts["skipped"] += 1  # input deleted after extraction (to save disk): the features stay
            else:
                writer.missing(v.id, failed_upstream.get(
                    v.id, f"not extracted: no {spec.source.name} output (run the {spec.source.name} stage)"))
                counts["missing"] += 1
            continue
        stale = spec.source.stale(work, v)
        if stale:
            writer.missing(v.id, f"failed in features: the {spec.source.name} output is stale ({stale}); "
                                 f"run the {spec.source.name} stage again")
            counts["failed"] += 1
            log.warning("features %s: %r has a stale %s output (%s)", spec.name, v.id, spec.source.name, stale)
            continue
        sources[v.id] = spec.source.provenance(work, v, options)
        if writer.has_shard(v.id):
            recorded = writer.source_record(v.id)
            if recorded is None or recorded == sources[v.id]:
                counts["skipped"] += 1
                continue
            counts["redone"] += 1
            log.info("features %s: %r redone, its input changed", spec.name, v.id)
        todo.append(v)
    return counts, todo, sources


def embed(spec: Modality, backbone: backbones.Backbone, writer: cache.ShardWriter, todo: Sequence[Video],
          sources: dict, counts: dict, work: Path, options: dict, loaders: int, videos_per_call: int | None,
          progress: bool | None) -> None:
    """Load, prepare and embed `todo`, writing one shard or missing-marker per video; `counts`
    is updated in place. `loaders` DataLoader worker processes prepare inputs (0: this thread)."""
    modality = spec.name
    per_call = max(1, int(videos_per_call or backbone.videos_per_call))
    loader = torch.utils.data.DataLoader(Inputs(work, modality, todo, options), batch_size=per_call,
                                         collate_fn=_as_list, num_workers=loaders,
                                         worker_init_fn=workers.ignore_ctrl_c if loaders else None,
                                         prefetch_factor=4 if loaders else None)
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(todo), desc=f"features {modality}", unit="video", disable=not show, file=sys.stderr)
    for items in loader:
        ready = [(vid, x) for vid, x, _ in items if x is not None]
        for vid, _, problem in items:
            if isinstance(problem, Missing):
                writer.missing(vid, problem.reason)
                counts["missing"] += 1
            elif problem:
                writer.missing(vid, f"failed in features: {problem}")
                counts["failed"] += 1
                log.warning("features %s failed on %r: %s", modality, vid, problem)
        if ready:
            for (vid, _), seq in zip(ready, backbone.embed([x for _, x in ready])):
                try:
                    writer.write(vid, seq, source=sources.get(vid))
                except ValueError as exc:  # e.g. a non-finite embedding: that one video's failure
                    writer.missing(vid, f"failed in features: {exc}")
                    counts["failed"] += 1
                    log.warning("features %s failed on %r: %s", modality, vid, exc)
                    continue
                counts["done"] += 1
        bar.update(len(items))
    bar.close()
