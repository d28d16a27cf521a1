"""`make bench-features` keeps working: a one-video run at a tiny geometry gives sane figures."""
import json

import pytest

from benchmarks import features as bench
from extract import manifest
from extract.manifest import Video
from tests import videos as tv

pytestmark = pytest.mark.slow  # each test runs the benchmark end to end


def test_bench_features_reports_every_stage_and_backbone(tmp_path):
    sample = tmp_path / "sample"
    sample.mkdir()
    video = Video(id="v0", path=str(tv.make_video(sample / "v0.mp4", seed=0)), label="positive", split="train")
    manifest.write_manifest(sample / "manifest.csv", [video])
    assert bench.main(["--videos", "1", "--num-frames", "8", "--size", "64", "--sample", str(sample),
                       "--out", str(tmp_path / "out"), "--captions", "20"]) == 0
    result = json.loads((tmp_path / "out" / "bench_features.json").read_text())
    assert [(r["kind"], r["step"]) for r in result["rows"]] == [
        ("stage", "frames"), ("stage", "flow"), ("stage", "audio"),
        ("features", "rgb"), ("features", "flow"), ("features", "audio"), ("features", "rgb2d"), ("features", "text")]
    for r in result["rows"]:
        assert r["videos"] == (20 if r["step"] == "text" else 1) and r["seconds_per_video"] > 0
        if r["kind"] == "stage":
            assert r["exit_code"] == 0 and r["mb_per_video"] > 0


def test_bench_features_times_named_backbones_and_only_the_stages_they_read(tmp_path):
    sample = tmp_path / "sample"
    sample.mkdir()
    video = Video(id="v0", path=str(tv.make_video(sample / "v0.mp4", seed=0, seconds=1.0)), label="positive",
                  split="train")
    manifest.write_manifest(sample / "manifest.csv", [video])
    assert bench.main(["--videos", "1", "--num-frames", "4", "--size", "32", "--sample", str(sample),
                       "--out", str(tmp_path / "out"), "--modalities", "hubert"]) == 0
    result = json.loads((tmp_path / "out" / "bench_features.json").read_text())
    assert [(r["kind"], r["step"]) for r in result["rows"]] == [
        ("stage", "frames"), ("stage", "audio"), ("features", "hubert")]   # no flow: nothing here reads it
    assert result["rows"][-1]["videos"] == 1 and result["rows"][-1]["seconds_per_video"] > 0
