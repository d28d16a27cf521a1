"""eGeMAPS v02 functionals (88 hand-crafted voice parameters) over windows of a 16 kHz waveform.

The Geneva Minimalistic Acoustic Parameter Set (Eyben et al., 2016), extended version, as
audEERING's `opensmile` package computes it: pitch, jitter, shimmer, loudness, formants,
spectral slopes, MFCC 1-4 and their statistics over a segment, 88 values per segment.

    rows = egemaps_rows(wave, window_s=4.0, hop_s=2.0)     # float32 [R, 88]
    FEATURE_NAMES                                            # openSMILE's 88 names, in column order

Row r is openSMILE's result for `wave[r*hop : r*hop + window]` alone, each window processed by
its own `Smile.process_signal` call (so a row never depends on audio outside its window; this is
what the tests compare with, within 1e-3 relative). Windows:

* full windows start at 0, hop, 2*hop, ... while they fit in the wave;
* audio left after the last full window gives one more row, at the next start, cut short at the
  wave's end, when that last window holds at least half a window of audio; a shorter tail is
  dropped (with hop <= window / 2, as usual, it lies inside the previous window anyway);
* a wave shorter than one window gives one row, over the whole wave;
* openSMILE needs about 0.06 s of audio (its 60-ms pitch frame) to produce anything: a window, or a
  wave, shorter than that raises ValueError (openSMILE itself would fill the row with NaN).

Samples are clipped to [-1, 32767/32768] first: openSMILE turns the float signal into 16-bit
integers by multiplying by 32768 without clipping, so a sample at exactly +1.0 (clipped audio, as
the audio stage stores it) would wrap around to -1.0.

Cost: openSMILE is built and run once per window, about 0.045 s per call plus 0.055 s per second
of audio on one core. A 15-s clip on the build machine (2 shared, heavily loaded cores; best of
3): one 15-s window 0.74 s, 4-s windows with a 2-s hop (7 rows) 1.4 s, 2 s / 1 s (14 rows) 2.0 s,
1 s / 0.5 s (29 rows) 2.6 s.

Licence: openSMILE (the `opensmile` package and the binary library inside its wheel) is
audEERING's research licence, not the project's MIT licence: free for research and education
and other non-commercial use; commercial use needs a licence from audEERING GmbH. It is an
optional dependency (`pip install .[egemaps]`), imported when the first rows are computed.
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

RATE = 16_000
DIM = 88
MIN_SAMPLES = 960             # shortest segment for which openSMILE 2.6's eGeMAPS gives values (0.06 s)
CLIP_HIGH = 32767 / 32768


@functools.lru_cache(maxsize=1)
def smile():
    """The openSMILE eGeMAPSv02 functionals extractor (built once per process)."""
    import opensmile

    return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                           feature_level=opensmile.FeatureLevel.Functionals)


def __getattr__(name: str):
    if name == "FEATURE_NAMES":
        return tuple(smile().feature_names)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def windows(n: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, end) sample ranges of the rows of a wave of n samples (see the module's rules)."""
    if window < 1 or hop < 1:
        raise ValueError(f"window and hop must be at least one sample, got {window} and {hop}")
    if n <= window:
        return [(0, n)]
    full = (n - window) // hop + 1
    spans = [(r * hop, r * hop + window) for r in range(full)]
    start = full * hop
    if spans[-1][1] < n and n - start >= window / 2:
        spans.append((start, n))
    return spans


def egemaps_rows(wave, window_s: float, hop_s: float, rate: int = RATE) -> np.ndarray:
    """eGeMAPSv02 functionals of each window of a mono waveform: float32 [R, 88].

    wave: 1-d float array in [-1, 1] at `rate` Hz (16 kHz, as the audio stage keeps it)."""
    wave = np.asarray(wave)
    if wave.ndim != 1 or wave.dtype.kind != "f":
        raise ValueError(f"expected a 1-d float waveform, got {wave.dtype} {tuple(wave.shape)}")
    if not np.isfinite(wave).all():
        raise ValueError("waveform holds NaN or infinite samples")
    window, hop = round(window_s * rate), round(hop_s * rate)
    spans = windows(len(wave), window, hop)
    short = [(a, b) for a, b in spans if b - a < MIN_SAMPLES]
    if short:
        a, b = short[0]
        raise ValueError(f"segment of {b - a} samples ({(b - a) / rate:.3f} s) at {a / rate:.2f} s is too short "
                         f"for eGeMAPS (openSMILE needs {MIN_SAMPLES / rate:.2f} s)")
    signal = np.clip(wave, -1.0, CLIP_HIGH)
    rows = np.empty((len(spans), DIM), dtype=np.float32)
    extractor = smile()
    for r, (a, b) in enumerate(spans):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # its "segment too short" note: checked below
            values = extractor.process_signal(signal[a:b], rate).to_numpy(dtype=np.float32)
        if values.shape != (1, DIM) or not np.isfinite(values).all():
            raise ValueError(f"openSMILE gave no eGeMAPS values for the segment {a / rate:.2f}-{b / rate:.2f} s")
        rows[r] = values[0]
    return rows


def row_count(n: int, window_s: float, hop_s: float, rate: int = RATE) -> int:
    """How many rows `egemaps_rows` gives for a wave of n samples."""
    return len(windows(n, round(window_s * rate), round(hop_s * rate)))
