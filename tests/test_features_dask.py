"""The feature stage on Dask (features/distributed.py): a LocalCluster of 2 worker processes
gives the local run's cache for every default modality, survives a worker killed mid-run, and a
killed client's run resumes to the same cache."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from extract import claims, cli, manifest
from extract.manifest import Video
from features import cache, distributed, modalities
from features.extract import extract_features
from tests import videos as tv
from tests.cli import cli_env, run_cli, start_cli
from tests.workdirs import copy_stages, run_all_stages

T, S = 8, 32
CAPTIONS = ["best day ever #sun", "", "so sad today", "@x https://t.co/a angry again", "calm evening", "ok", "", "wow"]


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes; they import this checkout (PYTHONPATH inherited)."""
    from dask.distributed import LocalCluster

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = cli_env()["PYTHONPATH"]
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
            yield c
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    rows = [Video(id=f"v {i}", path=str(tv.make_video(root / f"v{i}.mp4", seed=i, audio=i != 2)),
                  label="ab"[i % 2], split="train", text=CAPTIONS[i]) for i in range(8)]
    rows.append(Video(id="broken", path=str(tv.make_text_as_mp4(root / "broken.mp4")), label="a", split="train"))
    m = manifest.write_manifest(root / "manifest.csv", rows)
    w = root / "work"
    run_all_stages(rows, w, T, S)
    return root, m, w, rows


def _same_cache(a: Path, b: Path, modality: str) -> None:
    fa, fb = cache.load(a, modality), cache.load(b, modality)
    assert fa.ids == fb.ids
    np.testing.assert_array_equal(fa.lengths, fb.lengths)
    np.testing.assert_allclose(fa.x, fb.x, rtol=1e-5, atol=1e-5)  # float rounding: other processes, other threads
    assert cache.missing(a, modality) == cache.missing(b, modality)
    attrs_a, attrs_b = cache.attributes(a, modality), cache.attributes(b, modality)
    assert {k: v for k, v in attrs_a.items() if k not in cache.INFORMATIONAL_ATTRS} == \
           {k: v for k, v in attrs_b.items() if k not in cache.INFORMATIONAL_ATTRS}


@pytest.mark.parametrize("modality", modalities.names(default_only=True))
def test_dask_cache_equals_the_local_one(dataset, cluster, tmp_path, modality):
    _, _, w, rows = dataset
    local = extract_features(modality, rows, w, weights="random", device="cpu", loaders=0)
    here = copy_stages(w, tmp_path / "work")
    s = extract_features(modality, rows, here, weights="random", device="cpu", backend="dask",
                         scheduler=cluster.scheduler_address, task_videos=3)
    _same_cache(w, here, modality)
    assert s["done"] == len(cache.load(here, modality).ids) > 0
    assert s["missing"] + s["failed"] == len(cache.missing(here, modality)) and s["skipped"] == 0
    assert s["batches"] >= 2 and s["task_videos"] == 3 and local["failed"] == s["failed"]


def test_each_worker_loads_its_backbone_once(dataset, cluster, tmp_path):
    from dask.distributed import Client

    _, _, w, rows = dataset
    with Client(cluster.scheduler_address) as client:
        before = client.run(lambda: distributed.loads)
        for i in range(2):  # a second run on the same cluster reuses the workers' backbones
            extract_features("rgb2d", rows, copy_stages(w, tmp_path / f"w{i}"), weights="random", seed=7,
                             device="cpu", backend="dask", scheduler=cluster.scheduler_address, task_videos=1)
        after = client.run(lambda: distributed.loads)
    built = {addr: after[addr] - before.get(addr, 0) for addr in after}
    assert sorted(built.values()) == [1, 1], built  # 8 batches per run, 2 runs, 2 workers: one build each


def test_batches_are_published_under_the_claim_and_refused_after_a_reclaim(dataset, tmp_path):
    _, _, w, rows = dataset
    here = copy_stages(w, tmp_path / "work")
    key = distributed.BackboneKey.make("audio", "random", "cpu", 0, None, {})
    attrs = distributed._attributes_task(key, here)
    with cache.ShardWriter(here, "audio", attrs) as writer:
        claimed = writer.attrs
    # the folder was deleted and claimed again with other settings: a late batch must not land there
    import shutil

    shutil.rmtree(cache.shard_dir(here, "audio"))
    with cache.ShardWriter(here, "audio", {**attrs, "seed": 99}):
        with pytest.raises(claims.ClaimLost):
            distributed._batch_task(key, here, claimed, rows[:2], {}, None)
    assert not list(cache.shard_dir(here, "audio").glob("*.npy"))


def _kill_a_worker_when_the_first_shard_lands(shards: Path, pids: dict) -> threading.Thread:
    def kill():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(shards.glob("*.npy")):
            time.sleep(0.005)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        killer.killed = True

    killer = threading.Thread(target=kill)
    killer.killed = False
    killer.start()
    return killer


def test_a_worker_killed_mid_run_loses_only_its_batch(dataset, cluster, tmp_path):
    from dask.distributed import Client

    _, _, w, rows = dataset
    extract_features("rgb", rows, w, weights="random", device="cpu", loaders=0)
    here = copy_stages(w, tmp_path / "work")
    with Client(cluster.scheduler_address) as client:
        pids = client.run(os.getpid)
    killer = _kill_a_worker_when_the_first_shard_lands(cache.shard_dir(here, "rgb"), pids)
    s = extract_features("rgb", rows, here, weights="random", device="cpu", backend="dask",
                         scheduler=cluster.scheduler_address, task_videos=2)
    killer.join()
    assert killer.killed, "the worker should have been killed mid-run"
    assert s["done"] + s["failed"] + s["missing"] == len(rows) and s["skipped"] == 0
    _same_cache(w, here, "rgb")
    with Client(cluster.scheduler_address) as client:  # the nanny restarted it: two workers again
        client.wait_for_workers(2, timeout=60)


def test_a_batch_lost_for_good_fails_the_run_and_the_rerun_finishes_it(dataset, cluster, tmp_path):
    """With Dask allowed no retry, the killed worker's batch is lost: exit 2's error names it, the
    other batches are stored, and the next run does only the lost videos."""
    import dask
    from dask.distributed import Client, LocalCluster

    _, _, w, rows = dataset
    extract_features("rgb2d", rows, w, weights="random", device="cpu", loaders=0)
    here = copy_stages(w, tmp_path / "work")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as strict, \
            Client(strict) as client:
        killer = _kill_a_worker_when_the_first_shard_lands(cache.shard_dir(here, "rgb2d"), client.run(os.getpid))
        with pytest.raises(distributed.BatchesLost, match="run again to finish them"):
            extract_features("rgb2d", rows, here, weights="random", device="cpu", backend="dask",
                             scheduler=strict.scheduler_address, task_videos=2)
        killer.join()
    assert not cache.cache_path(here, "rgb2d").exists()
    s = extract_features("rgb2d", rows, here, weights="random", device="cpu", backend="dask",
                         scheduler=cluster.scheduler_address, task_videos=2)
    assert 0 < s["done"] < len(rows) - 1 and s["skipped"] > 0  # only what was lost
    _same_cache(w, here, "rgb2d")


def test_a_killed_client_run_resumes_to_the_same_cache(dataset, cluster, tmp_path):
    root, m, w, rows = dataset
    extract_features("flow", rows, w, weights="random", device="cpu", loaders=0)
    here = copy_stages(w, tmp_path / "work")
    args = ["--modality", "flow", "--manifest", str(m), "--work", str(here), "--weights", "random", "--device", "cpu",
            "--backend", "dask", "--scheduler", cluster.scheduler_address, "--task-videos", "1"]
    proc = start_cli("features.extract", *args)
    shards = cache.shard_dir(here, "flow")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(shards.glob("*.npy"))) < 1:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(shards.glob("*.npy"))) < len(rows) - 1, "the kill should land mid-run"
    assert not cache.cache_path(here, "flow").exists()
    done = run_cli("features.extract", *args)
    assert done.returncode == 0, done.stderr  # the broken video failed upstream: recorded as missing
    assert "Dask worker" in done.stdout
    _same_cache(w, here, "flow")
    with h5py.File(cache.cache_path(here, "flow"), "r") as f:
        assert f.attrs["format"] == cache.FORMAT


def test_cli_dask_errors_are_one_line_exit_2(dataset, cluster, tmp_path):
    _, m, w, _ = dataset
    here = copy_stages(w, tmp_path / "work")
    err = run_cli("features.extract", "--modality", "rgb", "--manifest", m, "--work", here,
                  "--weights", tmp_path / "none", "--backend", "dask", "--scheduler", cluster.scheduler_address)
    assert err.returncode == cli.EXIT_RUN_FAILED
    lines = err.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "rgb_imagenet.pt" in lines[0], err.stderr
