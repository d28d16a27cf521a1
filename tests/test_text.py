"""The text modality: captions through the real packaged sentence encoder (all-MiniLM-L6-v2)."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from benchmarks.cache import synthetic_cache, synthetic_videos
from classify import fuse as fuse_cli
from extract import sample
from extract.manifest import Video, write_manifest
from features import cache, text
from features.extract import extract_features
from features.extract import main as features_main
from tests.cli import run_cli
from tests.killing import kill_when


@pytest.fixture(scope="module")
def encoder():
    return text.load_encoder(text.DEFAULT_MODEL)


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_cleaning_is_explicit():
    raw = "  OMG\tbest day #BestDay @mike_22 https://t.co/xyz 😍🎉  ＦＵＮ\n"
    assert text.clean_caption(raw) == "OMG best day BestDay FUN"
    assert text.clean_caption(raw, emoji="keep") == "OMG best day BestDay 😍🎉 FUN"
    assert text.clean_caption(raw, hashtags="drop") == "OMG best day FUN"
    assert text.clean_caption("👍🏽❤️") == "" and text.clean_caption(None) == ""
    assert text.clean_caption("C# and e-mail me@x.com") == "C# and e-mail me@x.com"  # not tags or mentions
    with pytest.raises(ValueError, match="emoji"):
        text.clean_caption("x", emoji="translate")


def test_the_packaged_encoder_reads_meaning(encoder):
    e = encoder.encode(["I am thrilled", "what a wonderful day", "the bus leaves at nine"], normalize_embeddings=True)
    assert e.shape == (3, 384)
    assert _cos(e[0], e[1]) > _cos(e[0], e[2]) + 0.1


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    texts = ["I got the job!! #blessed 🎉", "worst day in a long time", "", None, "🎉😍", "the bus leaves at nine",
             "  so   grateful for this life  "]
    videos = [Video(id=f"c{i}", path=f"videos/c{i}.mp4", label="ab"[i % 2], split="train", text=t)
              for i, t in enumerate(texts)]
    manifest = write_manifest(root / "manifest.csv", videos)
    work = root / "work"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = features_main(["--modality", "text", "--manifest", str(manifest), "--work", str(work),
                              "--device", "cpu", "--loaders", "0", "--weights", "random"])
    return {"work": work, "videos": videos, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def test_cached_rows_equal_sentence_transformers_encode(captions, encoder):
    assert captions["code"] == 0, captions["stderr"]
    feats = cache.load(captions["work"], "text")
    assert feats.ids == ["c0", "c1", "c5", "c6"] and feats.lengths.tolist() == [1, 1, 1, 1]
    by_id = {v.id: v for v in captions["videos"]}
    for i, vid in enumerate(feats.ids):
        expected = encoder.encode(text.clean_caption(by_id[vid].text), normalize_embeddings=True)
        np.testing.assert_allclose(feats.x[i, 0], expected, atol=1e-4)
        assert abs(np.linalg.norm(feats.x[i, 0]) - 1) < 1e-4


def test_missing_captions_are_recorded_not_zero_filled(captions):
    assert cache.missing(captions["work"], "text") == {
        "c2": "no caption", "c3": "no caption", "c4": "no caption (empty after cleaning)"}
    assert "missing 3" in captions["stdout"] and "failed 0" in captions["stdout"]
    # a text cache is made with real weights whatever --weights says: no random-weights banner
    assert "RANDOM" not in captions["stderr"].upper()


def test_cache_records_model_hash_and_cleaning(captions, encoder):
    attrs = cache.attributes(captions["work"], "text")
    assert attrs["text_model"] == "all-MiniLM-L6-v2" and attrs["checkpoint"] == "all-MiniLM-L6-v2"
    assert attrs["sha256"] == text.weights_digest(encoder) and len(attrs["sha256"]) == 64
    assert attrs["weights"] == "pretrained" and attrs["dim"] == 384
    assert attrs["cleaning"]["emoji"] == "drop" and attrs["cleaning"]["hashtags"] == "word"
    assert cache.random_weights_banner(captions["work"], ["text"]) is None
    # other cleaning settings are other features: refused, not mixed into the same cache
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = features_main(["--modality", "text", "--manifest", str(captions["work"].parent / "manifest.csv"),
                              "--work", str(captions["work"]), "--device", "cpu", "--loaders", "0",
                              "--caption-emoji", "keep"])
    assert code == 2 and "emoji" in err.getvalue()


def test_killed_text_run_resumes_to_the_same_cache(tmp_path):
    plans = sample.plan_dataset(60)
    videos = [Video(id=p.id, path=f"videos/{p.id}.mp4", label=p.label, split="train", text=p.text) for p in plans]
    manifest = write_manifest(tmp_path / "m.csv", videos)
    args = ["--modality", "text", "--manifest", str(manifest), "--device", "cpu", "--loaders", "0",
            "--videos-per-call", "1"]
    shards = cache.shard_dir(tmp_path / "killed", "text")
    kill_when("features.extract", *args, "--work", tmp_path / "killed",
              ready=lambda: len(cache.shard_files(shards)) >= 3)
    done = len(cache.shard_files(shards))  # a temporary being written at the kill is not a shard
    assert 0 < done < len(videos), "the kill should land mid-run"
    runs = {w: run_cli("features.extract", *args, "--work", tmp_path / w) for w in ("killed", "clean")}
    assert all(r.returncode == 0 for r in runs.values()), runs["killed"].stderr
    assert f"skipped {done} /" in runs["killed"].stdout and "skipped 0 /" in runs["clean"].stdout
    a, b = cache.load(tmp_path / "killed", "text"), cache.load(tmp_path / "clean", "text")
    assert a.ids == b.ids and len(a.ids) == sum(bool(v.text) for v in videos)
    np.testing.assert_allclose(a.x, b.x, atol=1e-5)
    assert cache.missing(tmp_path / "killed", "text") == cache.missing(tmp_path / "clean", "text")


def test_fusion_uses_text_where_videos_have_it(tmp_path):
    n = 150
    ids = synthetic_videos(n)
    plans = {c: [p for p in sample.plan_dataset(3 * n) if p.label == c] for c in sample.CLASSES}
    videos = []
    for k, (vid, label, split) in enumerate(ids):
        p = plans[label][k // 3]
        videos.append(Video(id=vid, path=f"videos/{k}.mp4", label=label, split=split, text=p.text))
    manifest = write_manifest(tmp_path / "manifest.csv", videos)
    work = tmp_path / "work"
    synthetic_cache(work, n, modalities=("audio",), signal=True)
    s = extract_features("text", videos, work, device="cpu", loaders=0)
    assert s["missing"] == sum(not v.text for v in videos) > 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = fuse_cli.main(["--modalities", "audio,text", "--head", "linear", "--work", str(work),
                              "--manifest", str(manifest)])
    assert code == 0
    m = json.loads((work / "runs" / "fuse-audio+text-weighted-linear" / "metrics.json").read_text())
    test_ids = [v.id for v in videos if v.split == "test"]
    have_text = {v.id for v in videos if v.text}
    have_audio = set(cache.load(work, "audio").ids)
    assert m["per_modality"]["text"]["n"] == len([i for i in test_ids if i in have_text])
    assert m["joint"]["n"] == len([i for i in test_ids if i in have_text or i in have_audio])
    assert m["per_modality"]["text"]["accuracy"] > 0.6  # captions carry the class by meaning (85 % agree)
