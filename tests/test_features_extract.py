"""The feature stage end to end: stage outputs -> backbones -> HDF5 cache, with missing videos and resume."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from extract import cli, frames, manifest, stage
from extract.manifest import Video
from features import backbones, cache, inputs
from features.extract import extract_features, main
from tests import videos as tv
from tests.workdirs import run_all_stages
from tests.cli import run_cli
from tests.killing import kill_when

T, S = 8, 32


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    rows = [Video(id=f"v{i}", path=str(tv.make_video(root / f"v{i}.mp4", seed=i, audio=i != 2)), label="ab"[i % 2],
                  split="train") for i in range(4)]
    rows.append(Video(id="broken", path=str(tv.make_text_as_mp4(root / "broken.mp4")), label="a", split="train"))
    m = manifest.write_manifest(root / "manifest.csv", rows)
    w = root / "work"
    run_all_stages(rows, w, T, S)
    summaries = {m_: extract_features(m_, rows, w, weights="random", device="cpu", loaders=0)
                 for m_ in ("rgb", "flow", "audio", "rgb2d")}
    return m, w, rows, summaries


def test_all_four_caches_are_filled(extracted):
    _, w, rows, summaries = extracted
    dims = {"rgb": 1024, "flow": 1024, "audio": 128, "rgb2d": 512}
    for modality, dim in dims.items():
        ids, x, lengths = cache.load(w, modality)
        assert x.dtype == np.float32 and x.shape[2] == dim
        assert "broken" not in ids
        assert cache.missing(w, modality)["broken"].startswith("failed in frames")
    assert cache.load(w, "rgb2d").lengths.tolist() == [T] * 4
    assert cache.load(w, "rgb").lengths.tolist() == [1] * 4  # ceil(8 / 8) temporal positions


def test_video_without_audio_is_listed_missing_not_zero_filled(extracted):
    _, w, _, summaries = extracted
    ids, x, lengths = cache.load(w, "audio")
    assert "v2" not in ids and cache.missing(w, "audio")["v2"] == "no audio stream"
    assert summaries["audio"]["missing"] == 2 and summaries["audio"]["done"] == 3


def test_cached_sequence_is_what_the_backbone_computes(extracted):
    _, w, _, _ = extracted
    bb = backbones.load_backbone("rgb2d", weights="random", device="cpu")
    expected = bb.embed([inputs.imagenet_frames(frames.load(w, "v1"))])[0]
    ids, x, lengths = cache.load(w, "rgb2d")
    i = ids.index("v1")
    np.testing.assert_allclose(x[i, : lengths[i]], expected, rtol=1e-5, atol=1e-5)


def test_random_weights_are_recorded_for_the_banner(extracted):
    _, w, _, _ = extracted
    attrs = cache.attributes(w, "rgb")
    assert attrs["weights"] == "random" and attrs["stage_settings"]["num_frames"] == T
    assert "RANDOM" in cache.random_weights_banner(w, ["rgb"]).upper()


def test_refuses_to_run_without_weights(extracted, tmp_path, capsys):
    m, w, _, _ = extracted
    code = main(["--modality", "rgb", "--manifest", str(m), "--work", str(w), "--weights", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert "rgb_imagenet.pt" in err and "--weights random" in err


def test_rerun_skips_done_videos(extracted):
    m, w, rows, _ = extracted
    before = Path(cache.cache_path(w, "rgb2d")).stat().st_mtime_ns
    s = extract_features("rgb2d", rows, w, weights="random", device="cpu", loaders=0)
    assert (s["done"], s["skipped"]) == (0, 4)
    assert Path(cache.cache_path(w, "rgb2d")).stat().st_mtime_ns == before


def test_killed_feature_run_resumes_to_the_same_cache(tmp_path):
    video = tv.make_video(tmp_path / "v.mp4", seconds=1.0)
    rows = [Video(id=f"clip {i}", path=str(video), label="a", split="train") for i in range(10)]
    m = manifest.write_manifest(tmp_path / "m.csv", rows)
    settings = frames.FrameSettings(num_frames=16, size=96)
    for w in (tmp_path / "killed", tmp_path / "clean"):
        stage.run_stage(frames.STAGE, rows, w, settings, jobs=1)
    args = ["--modality", "rgb", "--manifest", str(m), "--weights", "random", "--device", "cpu", "--loaders", "0"]
    shards = cache.shard_dir(tmp_path / "killed", "rgb")
    kill_when("features.extract", *args, "--work", tmp_path / "killed",
              ready=lambda: len(cache.shard_files(shards)) >= 2)
    assert 0 < len(cache.shard_files(shards)) < len(rows), "the kill should land mid-run"
    assert not cache.cache_path(tmp_path / "killed", "rgb").exists()
    for w in ("killed", "clean"):
        assert run_cli("features.extract", *args, "--work", tmp_path / w).returncode == 0
    a, b = cache.load(tmp_path / "killed", "rgb"), cache.load(tmp_path / "clean", "rgb")
    assert a.ids == b.ids
    np.testing.assert_allclose(a.x, b.x, rtol=1e-5, atol=1e-6)
    with h5py.File(cache.cache_path(tmp_path / "killed", "rgb"), "r") as f:
        assert f.attrs["format"] == cache.FORMAT
