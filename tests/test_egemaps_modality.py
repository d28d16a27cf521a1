"""The `egemaps` modality: the cache's rows are openSMILE's own output on each window of the stored
waveform; no audio or a silent track is missing with its reason; without opensmile it says so."""
from __future__ import annotations

import importlib.util

import numpy as np
import opensmile
import pytest

from extract import audio, stage
from extract.manifest import Video, write_manifest
from features import cache, modalities
from features import extract as feature_stage
from features.extract import extract_features
from tests import videos as tv

RATE = 16_000


def by_hand(wave: np.ndarray, start: int, end: int) -> np.ndarray:
    smile = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals)
    return smile.process_signal(wave[start:end], RATE).to_numpy()[0]


def silent_video(path):
    tv._ffmpeg(["-f", "lavfi", "-i", "color=c=gray:s=64x48:d=1", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
                "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", path])
    return path


@pytest.fixture
def voices(staged, tmp_path):
    """The staged videos plus one without audio and one with a silent track, audio stage run."""
    extra = [Video(id="mute", path=str(tv.make_video(tmp_path / "mute.mp4", audio=False)), label="a", split="train"),
             Video(id="hush", path=str(silent_video(tmp_path / "hush.mkv")), label="b", split="train")]
    rows = staged.rows + extra
    stage.run_stage(audio.STAGE, rows, staged.work, audio.AudioSettings(), jobs=1)
    return staged.work, rows


@pytest.mark.parametrize("loaders", [0, 1])
def test_rows_are_opensmile_on_each_window_of_the_stored_waveform(voices, loaders):
    work, rows = voices
    s = extract_features("egemaps", rows, work, weights="random", device="cpu", loaders=loaders,
                         egemaps_window=0.4, egemaps_hop=0.3)
    assert (s["done"], s["missing"], s["failed"], s["weights"]) == (4, 2, 0, "pretrained")
    feats = cache.load(work, "egemaps")
    attrs = cache.attributes(work, "egemaps")
    assert attrs["window_s"] == 0.4 and attrs["hop_s"] == 0.3 and attrs["dim"] == 88
    assert attrs["checkpoint"].startswith("opensmile ") and attrs["weights"] == "pretrained"
    assert cache.random_weights_banner(work, ["egemaps"]) is None
    for i, vid in enumerate(feats.ids):
        wave = audio.load(work, vid, kind="waveform")
        window, hop = round(0.4 * RATE), round(0.3 * RATE)
        n = feats.lengths[i]
        assert n == 3, (vid, len(wave))   # 1 s: windows at 0, 0.3 and 0.6 s (0.9 s on: less than half a window)
        for r in range(n):
            expected = by_hand(np.clip(wave, -1, 32767 / 32768), r * hop, r * hop + window)
            assert np.allclose(feats.x[i, r], expected, rtol=1e-3, atol=1e-5), (vid, r)
    assert cache.missing(work, "egemaps") == {"mute": "no audio stream",
                                              "hush": "silent audio track (every sample is zero)"}


def test_window_and_hop_are_command_line_options_recorded_in_the_cache(voices, capsys):
    work, rows = voices
    manifest = write_manifest(work.parent / "voices.csv", rows)
    code = feature_stage.main(["--modality", "egemaps", "--manifest", str(manifest), "--work", str(work),
                               "--egemaps-window", "0.5", "--egemaps-hop", "0.25"])
    assert code == 0
    attrs = cache.attributes(work, "egemaps")
    assert (attrs["window_s"], attrs["hop_s"]) == (0.5, 0.25)
    assert attrs["options"]["egemaps_window"] == 0.5   # a number, as the default is
    out = capsys.readouterr()
    assert "features egemaps: done 4" in out.out and "random" not in out.err
    assert feature_stage.main(["--modality", "egemaps", "--manifest", str(manifest), "--work", str(work),
                               "--egemaps-window", "0.01"]) == 2
    assert "--egemaps-window must be at least 0.06 s" in capsys.readouterr().err


def test_without_opensmile_it_says_so_in_one_line_and_make_features_skips_it(voices, monkeypatch, capsys):
    work, rows = voices
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "opensmile" else real(name, *a))
    assert feature_stage.main(["--names"]) == 0
    out = capsys.readouterr()
    assert "egemaps" not in out.out.split() and "rgb" in out.out.split()
    assert out.err.strip().splitlines() == ["warning: modality egemaps needs the optional package opensmile, not "
                                            "installed here (pip install 'dmver-bench[egemaps]'); make features "
                                            "skips it"]
    manifest = write_manifest(work.parent / "voices.csv", rows)
    assert feature_stage.main(["--modality", "egemaps", "--manifest", str(manifest), "--work", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: modality egemaps needs the optional package opensmile, not installed here "
                   "(pip install 'dmver-bench[egemaps]')"]
    assert "no: pip install 'dmver-bench[egemaps]'" in feature_stage.listing()


def test_the_registry_entry():
    m = modalities.get("egemaps")
    assert (m.label, m.column, m.in_all, m.default, m.network.dim) == ("eGeMAPS", "Flow/Audio", True, True, 88)
    assert m.network.file is None and m.unavailable() is None
