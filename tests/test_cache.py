"""The HDF5 feature cache: what `load` returns, missing videos, settings checks, crash safety."""
from __future__ import annotations

import hashlib
import json
import logging
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from extract.layout import file_key
from features import cache
from tests.cli import cli_env

ATTRS = {"backbone": "i3d-rgb", "weights": "weights", "checkpoint": "rgb_imagenet.pt", "sha256": "ab" * 32,
         "num_frames": 16, "size": 112}
ODD_IDS = ["plain", "with space/and slash", "../../escape", "naïve 视频", "x" * 200]


def _fill(work, ids, lengths, dim=8, seed=0, attrs=ATTRS, modality="rgb"):
    rng = np.random.default_rng(seed)
    writer = cache.ShardWriter(work, modality, attrs)
    seqs = {}
    for vid, n in zip(ids, lengths):
        if n == 0:
            writer.missing(vid, "no audio track")
        else:
            seqs[vid] = rng.standard_normal((n, dim)).astype(np.float32)
            writer.write(vid, seqs[vid])
    return writer, seqs


def test_load_returns_padded_sequences_lengths_and_missing(tmp_path):
    lengths = [3, 1, 0, 5, 2]
    writer, seqs = _fill(tmp_path, ODD_IDS, lengths)
    writer.consolidate(ODD_IDS)
    feats = cache.load(tmp_path, "rgb")
    assert feats.ids == [v for v, n in zip(ODD_IDS, lengths) if n]
    assert feats.x.shape == (4, 5, 8) and feats.x.dtype == np.float32
    for i, vid in enumerate(feats.ids):
        n = feats.lengths[i]
        np.testing.assert_array_equal(feats.x[i, :n], seqs[vid])
        assert not feats.x[i, n:].any()                      # padding is zeros, never data
    assert cache.missing(tmp_path, "rgb") == {"../../escape": "no audio track"}
    assert cache.attributes(tmp_path, "rgb") == ATTRS
    # every file stays inside W/features, whatever the id looks like
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.resolve().is_relative_to((tmp_path / "features").resolve()) for p in written)


def test_equal_lengths_take_the_direct_read_path(tmp_path):
    writer, seqs = _fill(tmp_path, ["a", "b", "c"], [4, 4, 4], dim=3)
    writer.consolidate(["c", "a", "b"])
    feats = cache.load(tmp_path, "rgb")
    assert feats.ids == ["c", "a", "b"]
    np.testing.assert_array_equal(feats.x, np.stack([seqs["c"], seqs["a"], seqs["b"]]))


def test_consolidate_refuses_videos_without_shard_or_marker(tmp_path):
    writer, _ = _fill(tmp_path, ["a"], [2])
    with pytest.raises(cache.CacheIncompleteError, match="1 of 2 videos"):
        writer.consolidate(["a", "never extracted"])
    assert not cache.cache_path(tmp_path, "rgb").exists()


def test_bad_sequences_are_refused(tmp_path):
    writer = cache.ShardWriter(tmp_path, "rgb", ATTRS)
    with pytest.raises(ValueError, match="NaN"):
        writer.write("a", np.array([[np.nan, 1.0]], np.float32))
    with pytest.raises(ValueError, match=r"\[L, D\]"):
        writer.write("a", np.zeros((0, 4), np.float32))
    assert not writer.done("a")


def test_other_settings_are_refused_but_informational_keys_are_not(tmp_path):
    _fill(tmp_path, ["a"], [2])
    with pytest.raises(cache.CacheSettingsError, match="num_frames: 16 in the cache, 79 now"):
        cache.ShardWriter(tmp_path, "rgb", {**ATTRS, "num_frames": 79})
    resumed = cache.ShardWriter(tmp_path, "rgb", {**ATTRS, "device": "cuda", "package_version": "9"})
    assert resumed.done("a") and not resumed.done("b")


def test_consolidate_is_skipped_when_nothing_changed_and_redone_when_a_shard_did(tmp_path):
    writer, _ = _fill(tmp_path, ["a", "b"], [2, 3])
    path = writer.consolidate(["a", "b"])
    first = cache.fingerprint(tmp_path, "rgb")
    stamp = path.stat().st_mtime_ns
    time.sleep(0.01)
    writer.consolidate(["a", "b"])
    assert path.stat().st_mtime_ns == stamp and cache.fingerprint(tmp_path, "rgb") == first
    writer.write("b", np.ones((6, 8), np.float32))
    writer.consolidate(["a", "b"])
    assert cache.fingerprint(tmp_path, "rgb") != first
    assert cache.load(tmp_path, "rgb").lengths.tolist() == [2, 6]


def test_shards_are_named_by_the_layouts_file_key(tmp_path):
    writer, _ = _fill(tmp_path, ["with space/and slash"], [2])
    writer.missing("../../escape", "no audio track")
    names = sorted(p.name for p in writer.dir.iterdir() if not p.name.startswith("settings"))
    assert names == sorted(["attrs.json", f"{file_key('with space/and slash')}.npy",
                            f"{file_key('../../escape')}.missing.json"])
    assert json.loads((writer.dir / "attrs.json").read_text())["format"] == cache.FORMAT == 2


def _old_name(video_id: str) -> str:
    """How format 1 named a shard: a slug and 16 hex digits of the id's SHA-256."""
    digest = hashlib.sha256(video_id.encode("utf-8")).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id)[:48].strip("._-")
    return f"{slug}-{digest}" if slug else digest


def test_format_1_shards_are_redone_with_one_log_line(tmp_path, caplog):
    old = cache.shard_dir(tmp_path, "rgb")
    old.mkdir(parents=True)
    (old / "attrs.json").write_text(json.dumps(ATTRS))          # format 1 recorded no format
    (old / "settings.lock").write_text("")
    for vid in ("a", "b c"):
        np.save(old / f"{_old_name(vid)}.npy", np.full((3, 8), 7, np.float32))
        (old / f"{_old_name(vid)}.source.json").write_text("{}")
    (old / f"{_old_name('gone')}.missing.json").write_text(json.dumps({"id": "gone", "reason": "no audio"}))
    with caplog.at_level(logging.INFO, logger="features.cache"):
        writer = cache.ShardWriter(tmp_path, "rgb", ATTRS)
    lines = [r for r in caplog.records if r.name == "features.cache"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "2 shard(s) of cache format 1" in lines[0].getMessage() and "extracted again" in lines[0].getMessage()
    assert not any(writer.done(v) for v in ("a", "b c", "gone"))   # never read as this format's shards
    assert sorted(p.name for p in writer.dir.iterdir()) == ["attrs.json", "settings.lock"]
    assert not [p for p in (tmp_path / "features").iterdir() if p.name.startswith(".tmp-")]
    writer.write("a", np.ones((2, 8), np.float32))
    writer.missing("b c", "no audio track")
    writer.missing("gone", "no audio track")
    writer.consolidate(["a", "b c", "gone"])
    writer.close()
    assert cache.load(tmp_path, "rgb").x.tolist() == np.ones((1, 2, 8)).tolist()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="features.cache"):
        assert cache.ShardWriter(tmp_path, "rgb", ATTRS).done("a")     # once redone, it stays
    assert not [r for r in caplog.records if r.name == "features.cache"]


def test_a_shard_folder_of_a_newer_format_is_refused_not_removed(tmp_path):
    folder = cache.shard_dir(tmp_path, "rgb")
    folder.mkdir(parents=True)
    (folder / "attrs.json").write_text(json.dumps({**ATTRS, "format": cache.FORMAT + 1}))
    with pytest.raises(cache.CacheError, match="newer than this version"):
        cache.ShardWriter(tmp_path, "rgb", ATTRS)
    assert (folder / "attrs.json").is_file()


def _write_format_1_h5(path: Path, ids, seqs, missing: dict, attrs: dict) -> None:
    """A consolidated cache as format 1 wrote it, built here with h5py alone."""
    import h5py

    lengths = [len(x) for x in seqs]
    string = h5py.string_dtype("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.concatenate(seqs).astype(np.float32))
        f.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=string)
        f.create_dataset("missing_ids", data=np.array(list(missing), dtype=object), dtype=string)
        f.create_dataset("missing_reasons", data=np.array(list(missing.values()), dtype=object), dtype=string)
        f.attrs["attrs_json"] = json.dumps(attrs, sort_keys=True)
        f.attrs["format"] = 1
        f.attrs["dim"] = seqs[0].shape[1]
        f.attrs["source_digest"] = "f1"


def test_a_format_1_h5_is_still_read_and_an_unknown_format_is_refused(tmp_path):
    seqs = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((1, 2), np.float32)]
    _write_format_1_h5(cache.cache_path(tmp_path, "audio"), ["naïve 视频", "b"], seqs, {"c": "no audio stream"}, ATTRS)
    feats = cache.load(tmp_path, "audio")
    assert feats.ids == ["naïve 视频", "b"] and feats.lengths.tolist() == [3, 1]
    np.testing.assert_array_equal(feats.x[0], seqs[0])
    np.testing.assert_array_equal(feats.x[1], np.concatenate([seqs[1], np.zeros((2, 2), np.float32)]))
    assert cache.missing(tmp_path, "audio") == {"c": "no audio stream"}
    assert cache.attributes(tmp_path, "audio") == ATTRS and cache.fingerprint(tmp_path, "audio") == "f1"
    _write_format_1_h5(cache.cache_path(tmp_path, "flow"), ["a"], seqs[:1], {}, ATTRS)
    import h5py
    with h5py.File(cache.cache_path(tmp_path, "flow"), "r+") as f:
        f.attrs["format"] = 9
    with pytest.raises(cache.CacheError, match="cache format 9, this version reads 1, 2"):
        cache.load(tmp_path, "flow")


def test_missing_cache_names_the_command_to_run(tmp_path):
    with pytest.raises(cache.CacheMissingError, match="make features"):
        cache.load(tmp_path, "audio")


def test_banner_only_for_random_weights(tmp_path):
    _fill(tmp_path, ["a"], [1])[0].consolidate(["a"])
    assert cache.random_weights_banner(tmp_path, ["rgb", "flow"]) is None      # flow absent: no claim
    _fill(tmp_path, ["a"], [1], attrs={**ATTRS, "weights": "random"}, modality="audio")[0].consolidate(["a"])
    banner = cache.random_weights_banner(tmp_path, ["rgb", "audio"])
    assert banner.startswith("WARNING: RANDOM BACKBONE WEIGHTS for audio") and "NOT comparable" in banner


CONSOLIDATE_FOREVER = textwrap.dedent("""
    import sys
    import numpy as np
    from features import cache
    work, n = sys.argv[1], int(sys.argv[2])
    writer = cache.ShardWriter(work, "rgb", {"backbone": "test", "weights": "random"})
    ids = [f"v{i}" for i in range(n)]
    for i, vid in enumerate(ids):
        if not writer.done(vid):
            writer.write(vid, np.full((4, 256), i, np.float32))
    print("ready", flush=True)
    while True:                                   # rebuild again and again until killed
        writer.write("v0", np.full((4 + np.random.randint(3), 256), 0, np.float32))
        writer.consolidate(ids)
""")


def test_sigkill_during_consolidation_never_leaves_a_corrupt_cache(tmp_path):
    script = tmp_path / "forever.py"
    script.write_text(CONSOLIDATE_FOREVER)
    env = cli_env()
    work = tmp_path / "w"
    checked = 0
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, str(script), str(work), "400"], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if cache.exists(work, "rgb"):                       # whatever state it is in, it reads whole
            feats = cache.load(work, "rgb")
            assert len(feats.ids) == 400 and (feats.x[1:, :4, 0] == np.arange(1, 400)[:, None]).all()
            checked += 1
    assert checked >= 2                                      # the kills did land after consolidations
    # the next writer cleans up what the killed process left and consolidates
    writer = cache.ShardWriter(work, "rgb", {"backbone": "test", "weights": "random"})
    writer.consolidate([f"v{i}" for i in range(400)])
    leftovers = [p.name for p in (work / "features").rglob(".tmp-*")]
    assert leftovers == []
    assert cache.load(work, "rgb").x.shape[0] == 400
