"""Reliability of the feature stage and the heads: one bad input is one video's failure, crashes are
exit 2 with one line, and NaN never becomes a prediction."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.cache import synthetic_cache, synthetic_videos, write_synthetic_manifest
from classify import fuse as fuse_cli
from classify import train as train_cli
from classify.heads import HEADS, make_head
from extract import cli, frames, provenance, stage
from extract.layout import Work
from extract.manifest import Video
from features import backbones, cache
from features.checkpoints import CheckpointError
from features.extract import extract_features
from features.extract import main as features_main
from features.vggish import VGGish
from tests import videos as tv
from tests.cli import quiet, start_cli
from tests.workdirs import STAGED_FRAMES as T, STAGED_SIZE as S  # `staged`: tests/conftest.py


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _vouch_for(out: Path) -> None:
    """Make the stage's provenance record describe the output as it is now."""
    record = provenance.read_source_record(out)
    st = out.stat()
    record["output"] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    provenance.source_record_path(out).write_text(json.dumps(record))


def test_a_corrupt_stage_output_is_that_videos_failure(staged):
    """Case 1: truncated npz, flipped bytes, a valid zip holding garbage JPEG: each fails alone."""
    m, w, rows = staged
    _truncate(Work(w).output("frames", "v0", ".npz"))
    path = Work(w).output("frames", "v1", ".npz")
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 40] = bytes(40)
    path.write_bytes(bytes(data))
    path = Work(w).output("frames", "v2", ".npz")
    with np.load(path) as z:
        parts = dict(z)
    parts["jpeg"] = np.frombuffer(np.random.default_rng(0).bytes(parts["jpeg"].size), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **parts)
    _truncate(Work(w).output("flow", "v3", ".npz"))
    _truncate(Work(w).output("audio", "v3", ".npz"))
    for key in ("v0", "v1", "v2"):  # the decoding failures themselves, not only the record mismatch
        _vouch_for(Work(w).output("frames", key, ".npz"))

    for modality, bad in (("rgb", {"v0", "v1", "v2"}), ("flow", {"v3"}), ("audio", {"v3"})):
        code, out, err = quiet(features_main, ["--modality", modality, "--manifest", str(m), "--work", str(w),
                                               "--weights", "random", "--device", "cpu", "--loaders", "0"])
        assert code == cli.EXIT_SOME_FAILED, err
        assert f"failed {len(bad)}" in out and "Traceback" not in err
        reasons = cache.missing(w, modality)
        assert set(reasons) == bad and all(r.startswith("failed in features:") for r in reasons.values())
        if modality == "rgb":
            assert "stale" not in " ".join(reasons.values())  # BadZipFile, CRC, cv2: read and named
        assert sorted(cache.load(w, modality).ids) == sorted({r.id for r in rows} - bad)
        # a re-run retries the failed ones, and fails them again the same way
        code, out, _ = quiet(features_main, ["--modality", modality, "--manifest", str(m), "--work", str(w),
                                             "--weights", "random", "--device", "cpu", "--loaders", "0"])
        assert code == cli.EXIT_SOME_FAILED and f"skipped {4 - len(bad)}" in out


def test_non_finite_stage_output_fails_its_video_not_the_run(staged):
    """Case 2, feature side: a log-mel file holding NaN (written by an older stage) is one failure."""
    m, w, rows = staged
    path = Work(w).output("audio", "v1", ".npz")
    with np.load(path) as z:
        parts = dict(z)
    parts["examples"] = parts["examples"].copy()
    parts["examples"][0, 5, 5] = np.nan
    with open(path, "wb") as f:
        np.savez(f, **parts)
    _vouch_for(path)  # as if the stage itself had written it (an older version without the NaN check)
    s = extract_features("audio", rows, w, weights="random", device="cpu", loaders=0)
    assert (s["done"], s["failed"]) == (3, 1)
    assert "NaN" in cache.missing(w, "audio")["v1"]


def test_non_finite_embedding_is_that_videos_failure(staged, monkeypatch):
    m, w, rows = staged
    real = backbones.Backbone.embed

    def poisoned(self, items, batch_size=None):
        out = real(self, items, batch_size)
        return [np.full_like(o, np.nan) if i == 0 else o for i, o in enumerate(out)]

    monkeypatch.setattr(backbones.Backbone, "embed", poisoned)
    s = extract_features("rgb2d", rows, w, weights="random", device="cpu", loaders=0)
    assert s["failed"] == 4 and s["done"] == 0  # one video per call on the CPU: every one poisoned
    assert all("NaN" in r for r in cache.missing(w, "rgb2d").values())


def test_a_checkpoint_with_a_nan_weight_is_refused(staged, tmp_path):
    m, w, _ = staged
    state = VGGish().state_dict()
    state["embeddings.0.weight"][3, 4] = float("nan")
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(state, folder / "vggish-10086976.pth")
    with pytest.raises(CheckpointError, match="NaN or infinite.*embeddings.0.weight"):
        backbones.load_backbone("audio", folder)
    code, out, err = quiet(features_main, ["--modality", "audio", "--manifest", str(m), "--work", str(w),
                                           "--weights", str(folder), "--device", "cpu", "--loaders", "0"])
    assert code == cli.EXIT_USAGE and err.startswith("error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not cache.exists(w, "audio")


# ---- heads (case 8) ---------------------------------------------------------------------------------


def _nan_cache(tmp_path, n=60):
    work = tmp_path / "work"
    synthetic_cache(work, n, modalities=("audio",), signal=True)
    feats = cache.load(work, "audio")
    test_ids = {i for i, _, s in synthetic_videos(n) if s == "test"}
    victim = next(i for i in feats.ids if i in test_ids)
    x = feats.x.copy()
    x[feats.ids.index(victim), 0, :] = np.nan
    blocks = (x[i, : feats.lengths[i]] for i in range(len(feats.ids)))
    cache.write_consolidated(cache.cache_path(work, "audio"), feats.ids, feats.lengths, x.shape[2], blocks,
                             cache.missing(work, "audio"), cache.attributes(work, "audio"))
    return work, write_synthetic_manifest(tmp_path / "manifest.csv", n), victim


@pytest.mark.parametrize("head", HEADS)
def test_nan_features_are_refused_by_every_head(tmp_path, head):
    work, m, victim = _nan_cache(tmp_path)
    code, out, err = quiet(train_cli.main, ["--modality", "audio", "--head", head, "--work", str(work),
                                            "--manifest", str(m)])
    assert code == 2 and "NaN or infinite" in err and "Traceback" not in err
    assert not (work / "runs" / f"audio-{head}-seed0" / "metrics.json").exists()


@pytest.mark.parametrize("head", HEADS)
def test_one_class_in_training_is_refused(head):
    rng = np.random.default_rng(0)
    X, lengths = rng.normal(size=(20, 3, 4)).astype(np.float32), np.full(20, 3)
    with pytest.raises(ValueError, match="1 class"):
        make_head(head).fit(X, lengths, np.zeros(20, int), X[:5], lengths[:5], np.zeros(5, int), n_classes=3)


def test_bad_modality_name_is_one_line_exit_2(tmp_path):
    m = write_synthetic_manifest(tmp_path / "manifest.csv", 30)
    for fn, argv in ((train_cli.main, ["--modality", "../x"]), (fuse_cli.main, ["--modalities", "rgb,../x"])):
        code, out, err = quiet(fn, [*argv, "--work", str(tmp_path / "work"), "--manifest", str(m)])
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err


def test_changed_sources_and_captions_are_redone_not_reused(staged, tmp_path):
    """Case 5, feature side: a manifest row pointing at another video, and an edited caption."""
    m, w, rows = staged
    assert extract_features("rgb", rows, w, weights="random", device="cpu", loaders=0)["done"] == 4
    before = cache.load(w, "rgb")
    other = tv.make_video(tmp_path / "other.mp4", seed=9, pattern="static")
    rows = [Video(id=r.id, path=str(other), label=r.label, split=r.split) if r.id == "v2" else r for r in rows]
    s = extract_features("rgb", rows, w, weights="random", device="cpu", loaders=0)
    assert (s["failed"], s["skipped"]) == (1, 3)  # frames not re-run yet: named, not reused
    assert "frames output is stale (source changed)" in cache.missing(w, "rgb")["v2"]
    stage.run_stage(frames.STAGE, rows, w, frames.FrameSettings(num_frames=T, size=S), jobs=1)
    s = extract_features("rgb", rows, w, weights="random", device="cpu", loaders=0)
    assert (s["done"], s["skipped"]) == (1, 3)
    after = cache.load(w, "rgb")
    i, j = before.ids.index("v2"), after.ids.index("v2")
    assert not np.allclose(before.x[i], after.x[j])
    k = after.ids.index("v1")
    np.testing.assert_array_equal(before.x[before.ids.index("v1")], after.x[k])

    rows = [Video(id=r.id, path=r.path, label=r.label, split=r.split, text=f"caption {r.id}") for r in rows]
    assert extract_features("text", rows, w, device="cpu", loaders=0)["done"] == 4
    rows[0] = Video(id="v0", path=rows[0].path, label="a", split="train", text="a completely different caption")
    s = extract_features("text", rows, w, device="cpu", loaders=0)
    assert (s["done"], s["redone"], s["skipped"]) == (1, 1, 3)


def test_concurrent_feature_runs_with_other_settings_cannot_both_win(staged, tmp_path):
    """Case 4, feature side: seed 0 and seed 1 started together; one is refused (exit 2), and the
    cache holds only the winner's features."""
    m, w, rows = staged
    args = ["--modality", "rgb2d", "--manifest", str(m), "--work", str(w), "--weights", "random", "--device", "cpu",
            "--loaders", "0", "--videos-per-call", "1"]
    procs = [start_cli("features.extract", *args, "--seed", seed, capture=True) for seed in (0, 1)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = [r[0] for r in results]
    assert sorted(codes) == [0, 2], results
    loser = results[codes.index(2)]
    assert loser[2].startswith("error:") and "seed" in loser[2] and len(loser[2].strip().splitlines()) == 1
    winner_seed = codes.index(0)
    assert cache.attributes(w, "rgb2d")["seed"] == winner_seed
    bb = backbones.load_backbone("rgb2d", "random", seed=winner_seed)
    got = cache.load(w, "rgb2d")
    for i, vid in enumerate(got.ids):
        expected = bb.embed([bb.prepare(frames.load(w, vid))])[0]
        np.testing.assert_allclose(got.x[i, : got.lengths[i]], expected, rtol=1e-4, atol=1e-5)
