"""Running the stages (and the feature stage) on a Dask cluster.

`--backend dask` sends the same per-video work to `dask.distributed` workers instead of local
joblib processes; the workers write to the (shared) work folder under the run's claim, exactly
as local workers do. Without `--scheduler` a LocalCluster of `--jobs` worker processes lives as
long as the run. GPU work asks for `GPU` resources, so a worker started with
`--resources GPU=1` runs one such task per GPU at a time.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import threading
from typing import Any, Callable, Iterable, Iterator

from extract import cli
from extract.options import add_options, option
from extract.workers import default_jobs

CONNECT_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class DaskOptions:
    """Where Dask work runs; shared by the stages and the feature stage."""

    scheduler: str | None = option(None, "dask.distributed scheduler address (with --backend dask; default: a "
                                         "local cluster of --jobs worker processes)", type=str)
    gpus_per_task: float = option(0.0, "with --backend dask: GPU resources each task needs; workers started with "
                                       "--resources GPU=1 then run one such task per GPU at a time")
    connect_timeout: float = option(CONNECT_TIMEOUT, "with --scheduler: seconds to wait for the scheduler to "
                                                     "answer before giving up")


def add_dask_arguments(parser: argparse.ArgumentParser) -> None:
    """--scheduler and --gpus-per-task (`DaskOptions`)."""
    add_options(parser, DaskOptions)


def check_backend(backend: str, scheduler: str | None) -> None:
    """A scheduler address only means something with `--backend dask`: refuse it otherwise,
    rather than run on this machine while the user thinks the cluster does the work."""
    if scheduler and backend != "dask":
        raise cli.UserError(f"--scheduler {scheduler} needs --backend dask (the run would otherwise go to this "
                        "machine's processes)")


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Ask `address` who it is, within `timeout` seconds, before a Client is made.

    A Client pointed at something that is not a Dask scheduler can wait forever for a
    handshake that never comes, or read garbage as a message length and try to allocate it;
    this asks the scheduler's `identity` with one bounded exchange and raises a UserError
    naming the address otherwise."""
    from distributed.comm import connect
    from distributed.security import Security

    tls = Security().get_connection_args("client")  # the dask config's certificates, as a Client uses them

    async def identity():
        comm = await connect(address, timeout=timeout, **tls)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    answer: list = []

    def ask():  # a thread of its own: the caller may be running an event loop already
        try:
            answer.append(asyncio.run(asyncio.wait_for(identity(), timeout)))
        except BaseException as exc:  # noqa: BLE001 - reported below, whatever it is
            answer.append(exc)

    worker = threading.Thread(target=ask, name="dask-scheduler-check", daemon=True)
    worker.start()
    worker.join(timeout + 5)
    reply = answer[0] if answer else TimeoutError()
    if isinstance(reply, dict) and reply.get("type") == "Scheduler":
        return
    if isinstance(reply, (TimeoutError, asyncio.TimeoutError)):
        why = f"no answer within {timeout:g} s"
    elif isinstance(reply, BaseException):
        why = " ".join(f"{type(reply).__name__}: {reply}".split())[:200]
    else:
        why = "it answered, but not as a Dask scheduler"
    raise cli.UserError(f"no Dask scheduler at {address}: {why} (--connect-timeout sets the wait)")


@contextlib.contextmanager
def dask_client(scheduler: str | None, jobs: int = 0, gpus_per_task: float = 0,
                connect_timeout: float = CONNECT_TIMEOUT) -> Iterator[Any]:
    """A `dask.distributed.Client` for a run: of the cluster at `scheduler`, or of a LocalCluster
    of `jobs` single-threaded worker processes (0: one per core) that lives as long as the block.

    A local cluster with `gpus_per_task` has one worker declaring that many `GPU` resources (a
    machine's one GPU taken one task at a time); several GPUs need a scheduler and one worker per
    GPU (`CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nthreads 1 --resources GPU=1`)."""
    from dask.distributed import Client, LocalCluster

    cli.quiet_libraries()  # importing distributed turned its loggers back to INFO
    cluster = None
    if scheduler:
        check_scheduler(scheduler, connect_timeout)
    else:
        workers = 1 if gpus_per_task else (jobs if jobs > 0 else default_jobs())
        # no dashboard; the scheduler's HTTP server (always started) on a free loopback port, not
        # 8787, which another run may hold
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
                               resources={"GPU": gpus_per_task} if gpus_per_task else None)
    try:
        client = Client(scheduler or cluster, timeout=connect_timeout)
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
                  jobs: int = 0, gpus_per_task: float = 0, connect_timeout: float = CONNECT_TIMEOUT) -> Iterator[Any]:
    """`fn(item, *args)` for every item on a Dask cluster, yielded as each finishes.

    A generator: the cluster (a local one when `scheduler` is None) lives while it is consumed."""
    from dask.distributed import as_completed

    with dask_client(scheduler, jobs, gpus_per_task, connect_timeout) as client:
        futures = [client.submit(fn, item, *args, pure=False, resources=gpu_resources(gpus_per_task))
                   for item in items]
        for future in as_completed(futures):
            yield future.result()
