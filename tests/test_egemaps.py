"""eGeMAPS rows (features.egemaps) against openSMILE run on each window by hand."""
from __future__ import annotations

import numpy as np
import opensmile
import pytest

from features import egemaps

RATE = 16_000


def voiced(seconds: float, seed: int = 0) -> np.ndarray:
    """A vowel-like signal: harmonics of a gliding pitch, syllable-rate loudness, breath noise, pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    return (0.2 * envelope * tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def by_hand(wave: np.ndarray, start: int, end: int) -> np.ndarray:
    smile = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals)
    return smile.process_signal(wave[start:end], RATE).to_numpy()[0]


def test_each_row_is_opensmile_on_its_window():
    wave = voiced(5.3)
    rows = egemaps.egemaps_rows(wave, window_s=2.0, hop_s=1.0)
    # full windows at 0, 1, 2, 3 s; the rest (4.0-5.3 s, 1.3 s >= half a window) is a fifth, shorter row
    assert rows.dtype == np.float32 and rows.shape == (5, 88)
    for r in range(5):
        expected = by_hand(wave, r * RATE, r * RATE + 2 * RATE)
        assert np.allclose(rows[r], expected, rtol=1e-3, atol=1e-6), r
    assert not np.allclose(rows[0], rows[1], rtol=1e-2), "windows of a changing signal should differ"


def test_float64_waves_give_the_same_rows_as_opensmile():
    wave = voiced(2.5, seed=1).astype(np.float64)
    rows = egemaps.egemaps_rows(wave, window_s=1.5, hop_s=0.5)
    assert rows.shape == (3, 88)
    assert np.allclose(rows[2], by_hand(wave, RATE, int(2.5 * RATE)), rtol=1e-3, atol=1e-6)


def test_names_are_openSMILEs():
    assert len(egemaps.FEATURE_NAMES) == egemaps.DIM == 88
    assert egemaps.FEATURE_NAMES[0] == "F0semitoneFrom27.5Hz_sma3nz_amean"
    assert egemaps.FEATURE_NAMES[-1] == "equivalentSoundLevel_dBp"


@pytest.mark.parametrize("n, window, hop, spans", [
    (100, 200, 50, [(0, 100)]),                                  # shorter than a window: the whole wave
    (200, 200, 50, [(0, 200)]),                                  # exactly one window
    (300, 200, 100, [(0, 200), (100, 300)]),                     # fits exactly
    (399, 200, 100, [(0, 200), (100, 300), (200, 399)]),         # tail of 199 >= 100: a shorter last row
    (350, 200, 200, [(0, 200), (200, 350)]),                     # no overlap, tail of 150 kept
    (290, 200, 200, [(0, 200)]),                                 # tail of 90 < 100 dropped
    (1000, 200, 300, [(0, 200), (300, 500), (600, 800), (900, 1000)]),  # gaps between windows
])
def test_window_rules(n, window, hop, spans):
    assert egemaps.windows(n, window, hop) == spans
    assert egemaps.row_count(n, window / RATE, hop / RATE) == len(spans)


def test_a_short_wave_is_one_row_over_all_of_it():
    wave = voiced(0.7, seed=2)
    rows = egemaps.egemaps_rows(wave, window_s=3.0, hop_s=1.0)
    assert rows.shape == (1, 88)
    assert np.allclose(rows[0], by_hand(wave, 0, wave.size), rtol=1e-3, atol=1e-6)


def test_too_little_audio_is_refused_with_its_length():
    with pytest.raises(ValueError, match=r"segment of 800 samples \(0\.050 s\) at 0\.00 s is too short"):
        egemaps.egemaps_rows(voiced(0.05), window_s=1.0, hop_s=0.5)
    with pytest.raises(ValueError, match="too short"):
        egemaps.egemaps_rows(np.zeros(0, np.float32), window_s=1.0, hop_s=0.5)
    with pytest.raises(ValueError, match="too short"):
        egemaps.egemaps_rows(voiced(1.0), window_s=0.05, hop_s=0.05)


def test_bad_waves_are_refused():
    wave = voiced(1.0)
    with pytest.raises(ValueError, match="1-d float waveform"):
        egemaps.egemaps_rows(np.stack([wave, wave]), 1.0, 0.5)
    with pytest.raises(ValueError, match="1-d float waveform"):
        egemaps.egemaps_rows((wave * 32767).astype(np.int16), 1.0, 0.5)
    wave[100] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        egemaps.egemaps_rows(wave, 1.0, 0.5)


def test_full_scale_samples_do_not_wrap_around():
    t = np.arange(2 * RATE) / RATE
    clipped = np.clip(1.5 * np.sin(2 * np.pi * 180 * t), -1, 1).astype(np.float32)   # many samples at +1.0
    rows = egemaps.egemaps_rows(clipped, window_s=2.0, hop_s=1.0)
    just_below = np.clip(clipped, -1, 32767 / 32768)
    assert np.allclose(rows[0], by_hand(just_below, 0, clipped.size), rtol=1e-3, atol=1e-6)
    # openSMILE on the raw samples turns +1.0 into -32768: another signal
    assert not np.allclose(rows[0], by_hand(clipped, 0, clipped.size), rtol=1e-3, atol=1e-6)
