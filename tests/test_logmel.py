"""The VGGish log-mel front end against an independent, loop-by-loop re-computation of the
published parameters, and against properties that can be checked by hand."""
from __future__ import annotations

import math
import subprocess
import time

import numpy as np
import pytest
import scipy.signal

from extract.logmel import (MIN_SAMPLES, hertz_to_mel, log_mel_examples, log_mel_examples_padded,
                            log_mel_spectrogram, mel_matrix, num_frames)
from extract.media import ffmpeg_exe

SR = 16000


# ----------------------------------------------------------------------------- the reference


def _mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)


def reference_mel_matrix() -> np.ndarray:
    """64 triangles between 125 and 7500 Hz, one band at a time, in the mel domain."""
    lo, hi = _mel(125.0), _mel(7500.0)
    edges = [lo + (hi - lo) * j / 65 for j in range(66)]
    weights = np.zeros((257, 64))
    for k in range(1, 257):                      # bin 0 (DC) keeps weight 0
        m = _mel(k * 8000.0 / 256)
        for b in range(64):
            left, centre, right = edges[b], edges[b + 1], edges[b + 2]
            if left < m <= centre:
                weights[k, b] = (m - left) / (centre - left)
            elif centre < m < right:
                weights[k, b] = (right - m) / (right - centre)
    return weights


REF_MEL = reference_mel_matrix()


def reference_examples(x: np.ndarray) -> np.ndarray:
    """Published `waveform_to_examples` on 16 kHz mono float input, written out frame by frame."""
    window = scipy.signal.get_window("hann", 400, fftbins=True)
    n = 1 + (len(x) - 400) // 160
    log_mel = np.empty((n, 64))
    for t in range(n):
        magnitude = np.abs(np.fft.rfft(x[t * 160: t * 160 + 400] * window, 512))
        log_mel[t] = np.log(magnitude @ REF_MEL + 0.01)
    examples = [log_mel[i: i + 96] for i in range(0, n - 95, 96)]
    return np.array(examples).reshape(-1, 96, 64)


# ----------------------------------------------------------------------------- test audio


def speech_like(seconds: float = 3.5, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Voiced harmonics with vibrato and formant-shaped amplitudes, syllable envelope, noise bursts."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 130.0 + 25.0 * np.sin(2 * np.pi * 0.7 * t) + 6.0 * np.sin(2 * np.pi * 5.5 * t)   # glide + vibrato
    phase = 2 * np.pi * np.cumsum(f0) / sr
    formants = ((600.0, 120.0), (1400.0, 180.0), (2600.0, 250.0))
    voiced = np.zeros_like(t)
    for h in range(1, 40):
        fh = h * f0
        amp = sum(np.exp(-0.5 * ((fh - fc) / bw) ** 2) for fc, bw in formants) + 0.05 / h
        voiced += np.where(fh < sr / 2, amp, 0.0) * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    syllables = np.clip(np.sin(2 * np.pi * 3.7 * t), 0, None) ** 0.7
    signal = 0.08 * voiced * syllables
    noise = rng.standard_normal(t.size)
    hp = scipy.signal.butter(4, 3000, "highpass", fs=sr, output="sos")
    fricative = scipy.signal.sosfilt(hp, noise)
    bursts = np.zeros_like(t)
    for start in rng.uniform(0, seconds - 0.1, size=6):
        i = int(start * sr)
        bursts[i: i + int(0.08 * sr)] = np.hanning(int(0.08 * sr))
    signal += 0.15 * fricative * bursts + 0.002 * noise
    return signal.astype(np.float64)


def ffmpeg(*args: str, stdin: bytes | None = None) -> bytes:
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *(["-nostdin"] if stdin is None else []), *args]
    done = subprocess.run(command, input=stdin, capture_output=True, check=True)
    return done.stdout


@pytest.fixture(scope="module")
def aac_file(tmp_path_factory):
    """Speech-like audio at 44.1 kHz stereo, AAC-encoded in an .m4a by the FFmpeg binary."""
    left = speech_like(4.0, 44100, seed=1)
    right = 0.7 * left + 0.01 * np.random.default_rng(2).standard_normal(left.size)
    pcm = np.stack([left, right], axis=1).astype("<f4").tobytes()
    path = tmp_path_factory.mktemp("aac") / "speech.m4a"
    ffmpeg("-f", "f32le", "-ar", "44100", "-ac", "2", "-i", "pipe:0", "-c:a", "aac", "-b:a", "96k", str(path), stdin=pcm)
    return path


def decode(path, rate: int | None = None, channels: int | None = None) -> np.ndarray:
    args = ["-i", str(path), "-vn", "-f", "f32le"]
    if rate:
        args += ["-ar", str(rate)]
    if channels:
        args += ["-ac", str(channels)]
    return np.frombuffer(ffmpeg(*args, "pipe:1"), "<f4").astype(np.float64)


# ----------------------------------------------------------------------------- agreement


def test_mel_matrix_matches_per_band_triangles():
    np.testing.assert_allclose(mel_matrix(), REF_MEL, atol=1e-12)


def test_agrees_with_reference_on_speech_like_audio():
    x = speech_like(3.5)
    ours, ref = log_mel_examples(x, SR), reference_examples(x)
    assert ours.shape == ref.shape == (3, 96, 64)
    assert ours.dtype == np.float32
    assert np.max(np.abs(ours - ref)) < 1e-4
    assert ref.std() > 1.0                        # the signal really fills the bands


def test_agrees_with_reference_on_aac_decoded_audio(aac_file):
    x = decode(aac_file, rate=SR, channels=1)      # FFmpeg resamples and mixes down
    assert 3.9 * SR < x.size < 4.2 * SR
    ours, ref = log_mel_examples(x, SR), reference_examples(x)
    assert ours.shape == ref.shape and ours.shape[0] >= 4
    assert np.max(np.abs(ours - ref)) < 1e-4


def test_stereo_is_mean_of_channels(aac_file):
    stereo = decode(aac_file, rate=SR).reshape(-1, 2)
    ours = log_mel_examples(stereo, SR)
    ref = reference_examples(stereo.mean(axis=1))
    assert np.max(np.abs(ours - ref)) < 1e-4


def test_resampled_input_close_to_16k_input(aac_file):
    """44.1 kHz input goes through our resampler (soxr); FFmpeg's own 16 kHz decode differs
    only by resampler details, far below the spread of the features."""
    native = decode(aac_file).reshape(-1, 2)       # 44.1 kHz stereo
    ours = log_mel_examples(native, 44100)
    # stereo from FFmpeg, mixed by us: FFmpeg's own `-ac 1` mixes 0.707 (L + R), not the mean
    via_ffmpeg = log_mel_examples(decode(aac_file, rate=SR).reshape(-1, 2), SR)
    n = min(len(ours), len(via_ffmpeg))
    assert n >= 3
    diff = np.abs(ours[:n] - via_ffmpeg[:n])
    assert np.median(diff) < 0.005 and np.mean(diff) < 0.02, (np.median(diff), np.mean(diff))


def test_analytic_signal_same_at_44k_and_16k():
    """The same band-limited signal synthesised at 44.1 kHz and at 16 kHz gives the same features."""
    def synth(sr):
        t = np.arange(int(2.5 * sr)) / sr
        return sum(0.1 / k * np.sin(2 * np.pi * 220.0 * k * t + k) for k in range(1, 25))
    a, b = log_mel_examples(synth(44100), 44100), log_mel_examples(synth(SR), SR)
    assert a.shape == b.shape == (2, 96, 64)
    assert np.median(np.abs(a - b)) < 0.01


def test_integer_pcm_scaled_like_published_reader():
    x = speech_like(1.5)
    pcm = np.round(x * 32767).astype(np.int16)
    np.testing.assert_allclose(log_mel_examples(pcm, SR), reference_examples(pcm / 32768.0), atol=1e-4)


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("n", [400, 559, 560, 561, 16000, 15599, 15600, 240000])
def test_frame_count(n):
    x = np.random.default_rng(n).standard_normal(n)
    assert log_mel_spectrogram(x).shape == (1 + (n - 400) // 160, 64) == (num_frames(n), 64)


@pytest.mark.parametrize("n, examples", [(0, 0), (399, 0), (15599, 0), (15600, 1), (30959, 1), (30960, 2),
                                         (SR * 15, 15), (SR * 15 + 1000, 15)])
def test_example_count(n, examples):
    assert 15600 == MIN_SAMPLES == 400 + 95 * 160
    x = 0.1 * np.random.default_rng(1).standard_normal(n)
    assert log_mel_examples(x, SR).shape == (examples, 96, 64)


def test_mel_matrix_hand_values():
    w = mel_matrix()
    assert w.shape == (257, 64)
    assert np.all(w[0] == 0)                                   # DC row forced to zero
    assert np.all(w >= 0) and np.all(w <= 1)
    assert np.all(w[hertz_to_mel(np.arange(257) * 31.25) >= _mel(7500.0)] == 0)   # nothing above 7500 Hz
    assert np.all(w[np.arange(257) * 31.25 <= 125.0] == 0)     # nothing at or below 125 Hz
    lo, hi = _mel(125.0), _mel(7500.0)
    for b in range(64):
        centre_mel = lo + (hi - lo) * (b + 1) / 65
        centre_hz = 700.0 * (math.exp(centre_mel / 1127.0) - 1.0)
        peak_hz = np.argmax(w[:, b]) * 31.25
        assert abs(peak_hz - centre_hz) <= 31.25, (b, peak_hz, centre_hz)
    # a bin that sits exactly between two band centres (in mel) is shared equally
    k = 160                                                   # 5000 Hz
    m = _mel(5000.0)
    b = int((m - lo) / ((hi - lo) / 65)) - 1                  # band whose centre lies just below
    spacing = (hi - lo) / 65
    frac = (m - (lo + spacing * (b + 1))) / spacing
    assert w[k, b] == pytest.approx(1 - frac, abs=1e-12) and w[k, b + 1] == pytest.approx(frac, abs=1e-12)


@pytest.mark.parametrize("freq", [440.0, 1000.0, 2500.0, 4000.0, 6500.0])
def test_pure_tone_lands_in_its_band(freq):
    t = np.arange(2 * SR) / SR
    examples = log_mel_examples(0.5 * np.sin(2 * np.pi * freq * t), SR)
    band = int(np.argmax(examples.mean(axis=(0, 1))))
    lo, hi = _mel(125.0), _mel(7500.0)
    spacing = (hi - lo) / 65
    left = 700.0 * (math.exp((lo + spacing * band) / 1127.0) - 1.0)
    right = 700.0 * (math.exp((lo + spacing * (band + 2)) / 1127.0) - 1.0)
    assert left < freq < right, (freq, band, left, right)
    # and the nearest-centre band is the winner or its neighbour
    nearest = int(round((_mel(freq) - lo) / spacing)) - 1
    assert abs(band - nearest) <= 1


def test_silence_is_log_offset():
    examples = log_mel_examples(np.zeros(2 * SR), SR)
    np.testing.assert_allclose(examples, np.log(0.01), rtol=1e-6)


def test_opposite_channels_cancel():
    x = speech_like(1.2)
    examples = log_mel_examples(np.stack([x, -x], axis=1), SR)
    np.testing.assert_allclose(examples, np.log(0.01), rtol=1e-6)


def test_short_audio_and_padding():
    x = speech_like(0.5)                                      # 8000 samples: too short for one example
    assert log_mel_examples(x, SR).shape == (0, 96, 64)
    padded_examples, padded = log_mel_examples_padded(x, SR)
    assert padded and padded_examples.shape == (1, 96, 64)
    np.testing.assert_array_equal(padded_examples, log_mel_examples(x, SR, pad_short=True))
    ref = reference_examples(np.concatenate([x, np.zeros(MIN_SAMPLES - x.size)]))
    assert np.max(np.abs(padded_examples - ref)) < 1e-4
    # frames that lie wholly in the zero padding are log(0.01)
    first_silent = -(-x.size // 160)
    np.testing.assert_allclose(padded_examples[0, first_silent:], np.log(0.01), rtol=1e-6)
    # empty audio (any rate) pads to one silent example
    for rate in (SR, 44100):
        empty, flag = log_mel_examples_padded(np.zeros(0, np.float32), rate)
        assert flag and empty.shape == (1, 96, 64)
    # audio long enough is never padded, and its remainder is dropped as published
    long_x = speech_like(1.3)
    out, flag = log_mel_examples_padded(long_x, SR)
    assert not flag and out.shape == (1, 96, 64)
    np.testing.assert_array_equal(out, log_mel_examples(long_x, SR))
    # pad_short=False on the helper reports no padding
    assert log_mel_examples_padded(x, SR, pad_short=False)[1] is False


def test_short_audio_at_other_rate_is_padded_after_resampling():
    x = speech_like(0.6, 44100)
    out, flag = log_mel_examples_padded(x, 44100)
    assert flag and out.shape == (1, 96, 64)
    assert out[0, :50].mean() > np.log(0.01) + 1               # the speech is there, at the start


def test_bad_input_rejected():
    with pytest.raises(ValueError):
        log_mel_examples(np.zeros((2, 2, 2)), SR)
    with pytest.raises(ValueError):
        log_mel_examples(np.zeros(SR), 0)
    with pytest.raises(TypeError):
        log_mel_examples(np.array(["a"] * 20000), SR)


def test_fast_enough():
    x = 0.1 * np.random.default_rng(0).standard_normal(15 * SR)
    log_mel_examples(x, SR)
    best = min(_timed(log_mel_examples, x, SR) for _ in range(3))
    assert best < 0.1, f"{best * 1e3:.1f} ms for a 15 s clip"


def _timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t
