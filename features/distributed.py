"""The feature stage on a Dask cluster: batches of videos, one backbone per worker process.

    python -m features.extract --modality rgb --manifest M --work W --backend dask [--scheduler ADDRESS]
        [--jobs N] [--gpus-per-task 1] [--task-videos 16]

Why it is built this way:

* **The client plans, claims and consolidates.** It asks one worker for the cache's settings
  (that worker loads the backbone, so the checkpoint's SHA-256 and the device are the workers'
  own), claims `W/features/<modality>.shards/` with them (`cache.ShardWriter`, held until the
  run ends), works out which videos are missing or stale (`features.pipeline.plan`, the same as
  a local run), sends those in batches of `--task-videos` videos, and writes the `.h5` at the end.
* **Workers keep their backbone.** A backbone costs seconds to build and, on a GPU, its memory;
  each worker process loads it once, on its first batch, and keeps it for the next batches and
  the next runs (`worker_backbone`, keyed by everything that makes a backbone, the checkpoint
  file's size and mtime included, so a replaced file is loaded again).
* **Workers publish under the client's claim.** They see the work folder (shared storage) and
  write shards exactly as a local run does, through a joined `ShardWriter`: every shard is
  renamed into place inside `extract.claims.hold_claim`, i.e. only while `attrs.json` still holds
  the settings the batch was computed with.
* **A dead worker loses only its batch.** Shards already written stay (each appears atomically;
  temporaries of dead processes are removed by the next writer); Dask reschedules the batch that
  was running on another worker. A batch lost for good (Dask gives up after
  `distributed.scheduler.allowed-failures` deaths) leaves the rest finished; the run then exits 2
  and says so, and the next run does only what is missing. A consolidated cache is the same as a
  local run's: the same shards, consolidated in the manifest's order.
* **One GPU task per GPU.** `--gpus-per-task G` asks for `G` of the workers' `GPU` resources per
  batch; a worker started with `--resources GPU=1` then runs one batch at a time.

Inside a worker, inputs are prepared in the worker's own thread (Dask's worker processes are
daemons and cannot start DataLoader processes); the cluster's parallelism is its workers.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from extract import cluster
from extract.manifest import Video
from features import backbones, cache, modalities, pipeline

log = logging.getLogger(__name__)

DEFAULT_TASK_VIDEOS = 16   # videos per task: small enough that a lost batch costs little, large enough to amortise
KEEP_BACKBONES = 2         # backbones a worker process keeps (a run's, and the one before it)


@dataclasses.dataclass(frozen=True)
class BackboneKey:
    """Everything that makes a loaded backbone: what a worker's cache is keyed by."""

    modality: str
    weights: str
    device: str
    seed: int
    batch_size: int | None
    options: tuple      # sorted (name, value) pairs of the modality's options
    files: tuple = ()   # (name, size, mtime_ns) of the checkpoint files: a replaced file is loaded again

    @classmethod
    def make(cls, modality: str, weights: str | os.PathLike, device: str, seed: int, batch_size: int | None,
             options: dict) -> "BackboneKey":
        spec = modalities.get(modality)
        weights = str(weights) if str(weights) == "random" else str(Path(weights).resolve())
        files = ()
        if weights != "random" and spec.network.packaged is None:
            stamps = []
            for f in spec.network.files():
                try:
                    st = os.stat(Path(weights) / f.name)
                    stamps.append((f.name, st.st_size, st.st_mtime_ns))
                except OSError:
                    stamps.append((f.name, None, None))  # load_backbone says what is missing
            files = tuple(stamps)
        return cls(modality, weights, str(device), int(seed), batch_size,
                   tuple(sorted(spec.resolve_options(options).items())), files)

    def load(self) -> backbones.Backbone:
        return backbones.load_backbone(self.modality, weights=self.weights, device=self.device, seed=self.seed,
                                       batch_size=self.batch_size, **dict(self.options))


_loaded: collections.OrderedDict = collections.OrderedDict()
_loading = threading.Lock()
loads = 0  # backbones this process has built (tests check that a worker builds each once)


def worker_backbone(key: BackboneKey) -> backbones.Backbone:
    """This process's backbone for `key`: built on first use, then kept (the `KEEP_BACKBONES`
    most recently used ones). Thread-safe: a worker with several threads builds it once."""
    global loads
    with _loading:
        backbone = _loaded.get(key)
        if backbone is None:
            backbone = key.load()
            loads += 1
            _loaded[key] = backbone
            while len(_loaded) > KEEP_BACKBONES:
                _loaded.popitem(last=False)
        _loaded.move_to_end(key)
        return backbone


def _attributes_task(key: BackboneKey, work: Path) -> dict:
    """Worker side: the cache settings of this backbone on this worker (and the backbone, kept)."""
    return pipeline.cache_attributes(modalities.get(key.modality), worker_backbone(key), work, dict(key.options))


def _batch_task(key: BackboneKey, work: Path, attrs: dict, videos: Sequence[Video], sources: dict,
                videos_per_call: int | None) -> dict:
    """Worker side: embed one batch of videos into shards, published under the client's claim."""
    backbone = worker_backbone(key)
    writer = cache.ShardWriter(work, key.modality, attrs, claim=False)
    counts = pipeline.empty_counts()
    pipeline.embed(modalities.get(key.modality), backbone, writer, videos, sources, counts, work, dict(key.options),
           loaders=0, videos_per_call=videos_per_call, progress=False)
    return counts


class BatchesLost(RuntimeError):
    """Some batches could not be finished on the cluster (their workers kept dying)."""


def extract_on_dask(key: BackboneKey, videos: Sequence[Video], work: Path, scheduler: str | None, jobs: int,
                    gpus_per_task: float, task_videos: int | None, videos_per_call: int | None,
                    progress: bool | None) -> dict:
    """The client side of `features.extract.extract_features(..., backend="dask")`; same result dict."""
    from dask.distributed import as_completed
    from distributed.scheduler import KilledWorker
    from tqdm import tqdm

    started = time.perf_counter()
    spec = modalities.get(key.modality)
    options = dict(key.options)
    resources = cluster.gpu_resources(gpus_per_task)
    with cluster.dask_client(scheduler, jobs, gpus_per_task) as client:
        attrs = client.submit(_attributes_task, key, work, pure=False, resources=resources).result()
        with cache.ShardWriter(work, key.modality, attrs) as writer:
            counts, todo, sources = pipeline.plan(spec, writer, videos, work, options)
            kind = "cuda" if str(attrs.get("device", "cpu")).startswith("cuda") else "cpu"
            size = max(1, int(task_videos or max(DEFAULT_TASK_VIDEOS, spec.videos_per_call[kind])))
            batches = [todo[a:a + size] for a in range(0, len(todo), size)]
            futures = {client.submit(_batch_task, key, work, writer.attrs, batch,
                                     {v.id: sources.get(v.id) for v in batch}, videos_per_call,
                                     pure=False, resources=resources): batch for batch in batches}
            show = sys.stderr.isatty() if progress is None else progress
            bar = tqdm(total=len(todo), desc=f"features {key.modality} (dask)", unit="video", disable=not show,
                       file=sys.stderr)
            lost: list[tuple[list[Video], str]] = []
            try:
                for future in as_completed(futures):
                    batch = futures[future]
                    try:
                        done = future.result()
                    except KilledWorker as exc:  # its workers kept dying: the other batches go on
                        lost.append((batch, f"{type(exc).__name__}: {exc}"))
                        log.warning("features %s: a batch of %d videos was lost: %s", key.modality, len(batch), exc)
                        continue
                    for name, value in done.items():
                        counts[name] += value
                    bar.update(len(batch))
            except BaseException:
                client.cancel(list(futures))
                raise
            finally:
                bar.close()
            if lost:
                n = sum(len(b) for b, _ in lost)
                raise BatchesLost(f"features {key.modality}: {len(lost)} batch(es), {n} videos (e.g. {lost[0][0][0].id!r}), "
                                  f"could not be finished on the cluster ({lost[0][1]}); the other videos are stored: "
                                  f"run again to finish them")
            path = writer.consolidate([v.id for v in videos])
        workers = len(client.scheduler_info().get("workers", {}))
    return {**counts, "total": len(videos), "seconds": time.perf_counter() - started, "path": str(path),
            "weights": attrs["weights"], "device": f"{attrs.get('device', '?')}, {workers} Dask worker(s)",
            "batches": len(batches), "task_videos": size}

