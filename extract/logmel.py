"""VGGish log-mel front end: waveform -> `[N, 96, 64]` float32 examples.

A vectorised numpy re-implementation of the published `waveform_to_examples`
(VGGish, Hershey et al. 2017; the `vggish_input` / `mel_features` modules), with the
published parameters:

* mono (mean of the channels), resampled to 16 kHz;
* frames of 400 samples (25 ms) every 160 samples (10 ms), no padding:
  `1 + (n - 400) // 160` frames;
* periodic Hann window of length 400, real FFT of length 512, magnitude (not power), 257 bins;
* 64 mel bands between 125 and 7500 Hz on the HTK scale `mel(f) = 1127 ln(1 + f / 700)`:
  66 band edges equally spaced in mel, triangular weights computed in the mel domain from each
  FFT bin's mel value, the DC bin's weights forced to 0;
* `log(mel + 0.01)`;
* examples of 96 frames (0.96 s) every 96 frames, the trailing partial example dropped.

Why by hand and not with librosa: VGGish's mel matrix is defined in mel space (each FFT bin
weighted by its own mel value), while `librosa.filters.mel` draws its triangles in Hz between
mel-spaced edges, and `librosa.stft` centres the 400-sample window in the 512-sample frame; on
speech-like audio these move the log-mels by up to 0.01 and 2.4 from the published computation
(the tests allow 1e-4). For resampling librosa would only call libsoxr, which is used directly.

Input scaling follows the published reader: float input is taken as is (expected in [-1, 1]);
integer PCM is divided by 2**(bits - 1) (int16 / 32768).

Resampling. The published code resamples with `resampy` (kaiser_best). Here any rate other than
16 kHz goes through libsoxr (`soxr.resample`, quality "HQ"), a band-limited resampler of
comparable quality. Resampled input can therefore differ slightly from the published pipeline;
on 16 kHz input the result agrees with the published computation to float rounding (tests
check 1e-4).

Short audio. A clip needs at least `MIN_SAMPLES` = 400 + 95 * 160 = 15,600 samples at 16 kHz
(0.975 s) for one complete example; shorter audio gives `N = 0`. `log_mel_examples(...,
pad_short=True)` zero-pads such audio at its end (after mono mixing and resampling) to exactly
`MIN_SAMPLES`, so it always returns at least one example; `log_mel_examples_padded` returns the
same examples together with a flag saying whether padding happened, for the audio stage to record.
Audio that already gives one example or more is never padded, and its trailing remainder is
dropped as published.

Long audio. The whole-signal functions above hold every frame of the signal at once (about
3 GB per hour of audio). `Mono16k` and `ExampleStream` compute the same thing from a signal fed
in pieces, in memory bounded by the piece size: mono mixing is per sample, libsoxr's streaming
resampler gives the samples its one-call resampler gives, and example i depends only on the
16 kHz samples [15360 i, 15360 i + 15600), so each piece's complete examples are computed as
soon as their samples are there (consecutive examples share 240 samples, kept for the next
piece). The result equals the whole-signal functions' bit for bit (tests check it).
"""
from __future__ import annotations

import functools

import numpy as np

SAMPLE_RATE = 16000
WINDOW_LENGTH = 400          # 25 ms at 16 kHz
HOP_LENGTH = 160             # 10 ms
FFT_LENGTH = 512             # 2 ** ceil(log2(400))
NUM_BINS = FFT_LENGTH // 2 + 1
NUM_BANDS = 64
LOWER_EDGE_HZ = 125.0
UPPER_EDGE_HZ = 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96          # 0.96 s
EXAMPLE_HOP = 96             # = EXAMPLE_FRAMES: examples do not overlap (the reshape below relies on it)
#: Fewest 16 kHz samples that give one complete example.
MIN_SAMPLES = WINDOW_LENGTH + (EXAMPLE_FRAMES - 1) * HOP_LENGTH
#: 16 kHz samples from one example's first sample to the next one's.
EXAMPLE_STEP = EXAMPLE_HOP * HOP_LENGTH

__all__ = [
    "SAMPLE_RATE", "MIN_SAMPLES", "NUM_BANDS", "EXAMPLE_FRAMES",
    "hertz_to_mel", "mel_matrix", "periodic_hann", "to_mono", "resample", "num_frames",
    "log_mel_spectrogram", "log_mel_examples", "log_mel_examples_padded", "Mono16k", "ExampleStream",
]


def hertz_to_mel(hz):
    """HTK mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def _mel_matrix(num_bands: int, num_bins: int, sample_rate: int, lower_hz: float, upper_hz: float) -> np.ndarray:
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_bins))
    edges = np.linspace(hertz_to_mel(lower_hz), hertz_to_mel(upper_hz), num_bands + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    weights.setflags(write=False)
    return weights


def mel_matrix(num_bands: int = NUM_BANDS, num_bins: int = NUM_BINS, sample_rate: int = SAMPLE_RATE,
               lower_hz: float = LOWER_EDGE_HZ, upper_hz: float = UPPER_EDGE_HZ) -> np.ndarray:
    """`[num_bins, num_bands]` float64 weights (read-only, cached): spectrogram @ matrix = mel."""
    if not 0.0 <= lower_hz < upper_hz <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= lower_hz < upper_hz <= Nyquist, got {lower_hz}, {upper_hz} at {sample_rate} Hz")
    return _mel_matrix(int(num_bands), int(num_bins), int(sample_rate), float(lower_hz), float(upper_hz))


@functools.lru_cache(maxsize=4)
def periodic_hann(length: int = WINDOW_LENGTH) -> np.ndarray:
    """Periodic ("DFT-even") Hann window: 0.5 - 0.5 cos(2 pi k / N), k = 0..N-1."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi / length * np.arange(length))
    w.setflags(write=False)
    return w


def to_mono(waveform) -> np.ndarray:
    """1-D float64 signal: a 2-D `[samples, channels]` input is averaged over its channels.

    Integer PCM is scaled to [-1, 1) by 2**(bits - 1), as the published reader does for int16.
    """
    x = np.asarray(waveform)
    if x.ndim == 2:
        pass
    elif x.ndim != 1:
        raise ValueError(f"waveform must be 1-D [samples] or 2-D [samples, channels], got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64, copy=False)
    else:
        raise TypeError(f"waveform must hold integer or float samples, got {x.dtype}")
    if x.ndim == 2:
        if x.shape[1] == 0:
            raise ValueError("waveform has no channels")
        x = x.mean(axis=1)
    return x


def resample(x: np.ndarray, sample_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a 1-D float64 signal with libsoxr (quality HQ); identity when the rates match."""
    sample_rate = int(sample_rate)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if sample_rate == target_rate:
        return x
    if x.size == 0:
        return np.zeros(0, np.float64)
    try:
        import soxr
    except ImportError as exc:  # pragma: no cover - soxr is a declared dependency
        raise ImportError("resampling to 16 kHz needs the 'soxr' package (pip install soxr); "
                          "or pass 16 kHz audio") from exc
    return np.asarray(soxr.resample(x, sample_rate, target_rate, quality="HQ"), dtype=np.float64)


def num_frames(num_samples: int) -> int:
    """Number of 25 ms frames in `num_samples` 16 kHz samples: 1 + (n - 400) // 160, at least 0."""
    return max(0, 1 + (int(num_samples) - WINDOW_LENGTH) // HOP_LENGTH)


def log_mel_spectrogram(x16k: np.ndarray) -> np.ndarray:
    """`[frames, 64]` float64 log-mel spectrogram of a 1-D 16 kHz float signal."""
    x16k = np.asarray(x16k, dtype=np.float64)
    n = num_frames(x16k.shape[0])
    if n == 0:
        return np.zeros((0, NUM_BANDS), np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x16k, WINDOW_LENGTH)[::HOP_LENGTH][:n]
    spectrum = np.abs(np.fft.rfft(frames * periodic_hann(WINDOW_LENGTH), n=FFT_LENGTH, axis=1))
    return np.log(spectrum @ mel_matrix() + LOG_OFFSET)


def log_mel_examples_padded(waveform, sample_rate: int, pad_short: bool = True) -> tuple[np.ndarray, bool]:
    """`(examples [N, 96, 64] float32, padded)`.

    With `pad_short` (the default here) audio too short for one example (fewer than
    `MIN_SAMPLES` samples after resampling, including empty audio) is zero-padded at its end to
    one example, and `padded` is True. Without it such audio gives `N = 0` and `padded` False.
    """
    x = resample(to_mono(waveform), sample_rate)
    padded = False
    if pad_short and x.shape[0] < MIN_SAMPLES:
        x = np.concatenate([x, np.zeros(MIN_SAMPLES - x.shape[0], np.float64)])
        padded = True
    log_mel = log_mel_spectrogram(x)
    n_examples = 0 if log_mel.shape[0] < EXAMPLE_FRAMES else 1 + (log_mel.shape[0] - EXAMPLE_FRAMES) // EXAMPLE_HOP
    examples = log_mel[: n_examples * EXAMPLE_FRAMES].reshape(n_examples, EXAMPLE_FRAMES, NUM_BANDS)
    return examples.astype(np.float32), padded


def log_mel_examples(waveform, sample_rate: int, pad_short: bool = False) -> np.ndarray:
    """VGGish input examples `[N, 96, 64]` float32 of a waveform (published `waveform_to_examples`).

    `waveform`: 1-D `[samples]` or 2-D `[samples, channels]` (channels are averaged), float in
    [-1, 1] or integer PCM; `sample_rate`: its rate in Hz (resampled to 16 kHz when different).
    `pad_short=True` zero-pads audio shorter than one example (see the module docstring); use
    `log_mel_examples_padded` to also learn whether that happened.
    """
    return log_mel_examples_padded(waveform, sample_rate, pad_short=pad_short)[0]


class Mono16k:
    """`resample(to_mono(piece), sample_rate)` of a signal fed in consecutive pieces.

    Call it on each piece (1-D or `[samples, channels]`, as `to_mono` takes) in order, then
    `flush()` once: the concatenated outputs equal `resample(to_mono(whole), sample_rate)`."""

    def __init__(self, sample_rate: int):
        self.sample_rate = int(sample_rate)
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        self._stream = None
        if self.sample_rate != SAMPLE_RATE:
            import soxr

            self._stream = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float64", quality="HQ")

    def __call__(self, piece) -> np.ndarray:
        x = to_mono(piece)
        if self._stream is None:
            return x
        return np.asarray(self._stream.resample_chunk(np.ascontiguousarray(x)), dtype=np.float64)

    def flush(self) -> np.ndarray:
        """The resampler's last samples (held back for its filter's delay); empty at 16 kHz."""
        if self._stream is None:
            return np.zeros(0, np.float64)
        return np.asarray(self._stream.resample_chunk(np.zeros(0, np.float64), last=True), dtype=np.float64)


class ExampleStream:
    """`log_mel_examples_padded` of a 16 kHz mono signal fed in consecutive pieces.

    `push(piece)` returns the examples completed by that piece (`[k, 96, 64]` float32, k >= 0);
    `finish(pad_short)` the last ones and the padded flag. Their concatenation equals
    `log_mel_examples_padded(whole, 16000, pad_short)`. Memory: one piece plus 15,600 samples."""

    def __init__(self):
        self._pending = np.zeros(0, np.float64)   # the signal from the next example's first sample on
        self.count = 0                            # examples returned so far
        self.samples = 0                          # samples pushed so far

    def push(self, x16k) -> np.ndarray:
        x = np.asarray(x16k, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"ExampleStream takes a 1-D 16 kHz signal, got shape {x.shape}")
        self.samples += x.shape[0]
        pending = np.concatenate([self._pending, x]) if self._pending.size else x
        k = 0 if pending.shape[0] < MIN_SAMPLES else 1 + (pending.shape[0] - MIN_SAMPLES) // EXAMPLE_STEP
        if k == 0:
            self._pending = pending.copy() if pending is x else pending
            return np.zeros((0, EXAMPLE_FRAMES, NUM_BANDS), np.float32)
        log_mel = log_mel_spectrogram(pending[: (k - 1) * EXAMPLE_STEP + MIN_SAMPLES])   # exactly k * 96 frames
        self._pending = pending[k * EXAMPLE_STEP:].copy()   # a copy: the piece itself is not kept alive
        self.count += k
        return log_mel.reshape(k, EXAMPLE_FRAMES, NUM_BANDS).astype(np.float32)

    def finish(self, pad_short: bool = True) -> tuple[np.ndarray, bool]:
        """`(examples, padded)`: with `pad_short`, audio too short for any example (fewer than
        `MIN_SAMPLES` samples in all) is zero-padded to one example, as the whole-signal function does."""
        if pad_short and self.count == 0:
            x = np.concatenate([self._pending, np.zeros(MIN_SAMPLES - self._pending.shape[0], np.float64)])
            self._pending = np.zeros(0, np.float64)
            self.count = 1
            return log_mel_spectrogram(x).reshape(1, EXAMPLE_FRAMES, NUM_BANDS).astype(np.float32), True
        self._pending = np.zeros(0, np.float64)
        return np.zeros((0, EXAMPLE_FRAMES, NUM_BANDS), np.float32), False
