"""Running the stages (and the feature stage) on a Dask cluster.

`--backend dask` sends the same per-video work to `dask.distributed` workers instead of local
joblib processes; the workers write to the (shared) work folder under the run's claim, exactly
as local workers do. Without `--scheduler` a LocalCluster of `--jobs` worker processes lives as
long as the run. GPU work asks for `GPU` resources, so a worker started with
`--resources GPU=1` runs one such task per GPU at a time.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
from typing import Any, Callable, Iterable, Iterator

from extract.options import add_options, option
from extract.workers import default_jobs


@dataclasses.dataclass(frozen=True)
class DaskOptions:
    """Where Dask work runs; shared by the stages and the feature stage."""

    scheduler: str | None = option(None, "dask.distributed scheduler address (with --backend dask; default: a "
                                         "local cluster of --jobs worker processes)", type=str)
    gpus_per_task: float = option(0.0, "with --backend dask: GPU resources each task needs; workers started with "
                                       "--resources GPU=1 then run one such task per GPU at a time")


def add_dask_arguments(parser: argparse.ArgumentParser) -> None:
    """--scheduler and --gpus-per-task (`DaskOptions`)."""
    add_options(parser, DaskOptions)


@contextlib.contextmanager
def dask_client(scheduler: str | None, jobs: int = 0, gpus_per_task: float = 0) -> Iterator[Any]:
    """A `dask.distributed.Client` for a run: of the cluster at `scheduler`, or of a LocalCluster
    of `jobs` single-threaded worker processes (0: one per core) that lives as long as the block.

    A local cluster with `gpus_per_task` has one worker declaring that many `GPU` resources (a
    machine's one GPU taken one task at a time); several GPUs need a scheduler and one worker per
    GPU (`CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nthreads 1 --resources GPU=1`)."""
    from dask.distributed import Client, LocalCluster

    cluster = None
    if not scheduler:
        workers = 1 if gpus_per_task else (jobs if jobs > 0 else default_jobs())
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               resources={"GPU": gpus_per_task} if gpus_per_task else None)
    try:
        client = Client(scheduler or cluster)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def gpu_resources(gpus_per_task: float) -> dict | None:
    """`submit(..., resources=...)` for a task that needs GPUs: Dask then runs at most as many at
    once on a worker as its declared `GPU` resources allow (`dask worker --resources GPU=1`)."""
    return {"GPU": gpus_per_task} if gpus_per_task else None


def map_unordered(fn: Callable[..., Any], items: Iterable[Any], *args: Any, scheduler: str | None = None,
                  jobs: int = 0, gpus_per_task: float = 0) -> Iterator[Any]:
    """`fn(item, *args)` for every item on a Dask cluster, yielded as each finishes.

    A generator: the cluster (a local one when `scheduler` is None) lives while it is consumed."""
    from dask.distributed import as_completed

    with dask_client(scheduler, jobs, gpus_per_task) as client:
        futures = [client.submit(fn, item, *args, pure=False, resources=gpu_resources(gpus_per_task))
                   for item in items]
        for future in as_completed(futures):
            yield future.result()
