"""The README's projection (benchmarks/projection.py) and `make bench-dask` (benchmarks/dask_overhead.py)."""
from __future__ import annotations

import json

import pytest

from benchmarks import dask_overhead as bench_dask, projection
from extract import manifest
from extract.manifest import Video
from tests import videos as tv
from tests.cli import cli_env

BENCH = {"cpus": 2, "date": "d", "load_average": [1.0, 1.0, 1.0], "rows": [
    {"kind": "stage", "step": "flow", "seconds_per_video": 7.0},
    {"kind": "stage", "step": "audio", "seconds_per_video": 0.1},
    {"kind": "features", "step": "audio", "seconds_per_video": 0.3},
    {"kind": "features", "step": "text", "seconds_per_video": 0.01}]}


def test_projection_scales_audio_by_length_cores_by_rate_and_counts_captions():
    p = projection.project(BENCH, bench_seconds=5.0, cores=16)
    rows = {(r["kind"], r["step"]): r for r in p["rows"]}
    n = projection.DMVER_VIDEOS
    assert rows["stage", "flow"]["hours_here"] == pytest.approx(7.0 * n / 3600)
    assert rows["stage", "flow"]["hours_cores"] == pytest.approx(7.0 * 2 / 16 * n / 3600)
    assert rows["features", "audio"]["seconds_per_video"] == pytest.approx(0.3 * 15 / 5)
    assert rows["stage", "audio"]["seconds_per_video"] == pytest.approx(0.1 * 15 / 5)
    assert rows["features", "text"]["videos"] == projection.DMVER_CAPTIONED
    assert p["total_gpu"] is None and "not measured" in projection.markdown(p)


def test_projection_counts_faces_face_and_egemaps_from_one_core_rates():
    faces = {"faces_stage": {"wall": 1.2, "cpu": 1.0}, "expression": {"wall": 0.1, "cpu": 0.1},
             "egemaps": {"wall": 1.6, "cpu": 1.5}}
    rows = projection.face_rows(faces, cores=2)
    assert [(r["kind"], r["step"]) for r in rows] == [("stage", "faces"), ("features", "face"), ("features", "egemaps")]
    p = projection.project({**BENCH, "rows": BENCH["rows"] + rows}, bench_seconds=5.0, cores=16)
    by = {(r["kind"], r["step"]): r for r in p["rows"]}
    n = projection.DMVER_VIDEOS
    assert by["stage", "faces"]["hours_here"] == pytest.approx(1.2 / 2 * n / 3600)    # 2 cores share the videos
    assert by["features", "egemaps"]["seconds_per_video"] == pytest.approx(0.8)       # already 15-s audio: not scaled
    assert "| faces stage |" in projection.markdown(p) and "| egemaps features |" in projection.markdown(p)


def test_projection_takes_the_gpu_column_from_a_cuda_report_only():
    gpu = {"device": "cuda", "environment": {"gpu": "H100"}, "stages": {"rows": [
        {"step": "flow stage (torch TV-L1)", "seconds_per_video": 0.2},
        {"step": "audio stage", "seconds_per_video": 0.05},
        {"step": "audio features", "seconds_per_video": 0.01},
        {"step": "text features", "seconds_per_video": 0.001}]}}
    p = projection.project(BENCH, bench_seconds=5.0, cores=16, gpu=gpu)
    rows = {(r["kind"], r["step"]): r for r in p["rows"]}
    assert rows["stage", "flow"]["hours_gpu"] == pytest.approx(0.2 * projection.DMVER_VIDEOS / 3600)
    assert rows["features", "audio"]["hours_gpu"] == pytest.approx(0.01 * 3 * projection.DMVER_VIDEOS / 3600)
    assert p["total_gpu"] is not None and "H100" in projection.markdown(p)
    assert projection.project(BENCH, 5.0, 16, {**gpu, "device": "cpu"})["total_gpu"] is None  # a rehearsal


def test_projection_cli_needs_the_benchmark(tmp_path, capsys):
    assert projection.main(["--bench", str(tmp_path / "none.json")]) == 2
    assert "make bench-features" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_dask_times_every_step_both_ways(tmp_path, monkeypatch):
    sample = tmp_path / "sample"
    sample.mkdir()
    rows = [Video(id=f"v{i}", path=str(tv.make_video(sample / f"v{i}.mp4", seed=i)), label="positive", split="train",
                  text="a caption") for i in range(2)]
    manifest.write_manifest(sample / "manifest.csv", rows)
    monkeypatch.setenv("PYTHONPATH", cli_env()["PYTHONPATH"])  # the cluster's workers import this checkout
    monkeypatch.setattr(bench_dask, "default_jobs", lambda: 1)  # one worker: keep the shared machine free
    assert bench_dask.main(["--videos", "2", "--num-frames", "8", "--size", "32", "--sample", str(sample),
                            "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "bench_dask.json").read_text())
    assert [(r["kind"], r["step"]) for r in result["rows"]] == [
        ("stage", "frames"), ("stage", "flow"), ("stage", "audio"),
        ("features", "rgb"), ("features", "flow"), ("features", "audio"), ("features", "rgb2d"), ("features", "text")]
    assert all(r["local_seconds"] > 0 and r["dask_seconds"] > 0 for r in result["rows"])
    assert result["workers"] == 1 and result["cluster_startup_seconds"] > 0
