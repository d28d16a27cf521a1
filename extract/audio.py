"""Audio stage: VGGish log-mel examples and the 16 kHz waveform per video.

`python -m extract.audio --manifest M --work W` writes `W/audio/<key>.npz` with `examples`,
float32 `[N, 96, 64]`, the waveform `waveform_flac` and two flags: `has_audio` (False when the
file has no audio stream: recorded as missing audio, not as a failure) and `padded` (True when
the audio was shorter than one 0.96 s example and was zero-padded to one). The front end is
`log_mel_examples` (extract/logmel.py); the first audio stream is decoded by FFmpeg at its own
rate and channels, mixed to mono and resampled to 16 kHz (libsoxr HQ) once; the log-mels are
computed from that signal.

Memory does not grow with the file's length (an hour-long dialog or music video needs what a
one-minute clip does): the audio is read from FFmpeg's pipe a minute at a time
(`media.audio_chunks`), mixed, resampled and turned into examples piece by piece (`logmel.Mono16k`,
`logmel.ExampleStream`, equal to the whole-signal computation bit for bit), and the examples and
the FLAC stream are appended to temporaries beside the output, then copied into the `.npz`
(`write_npz`), which is published atomically as before.

The waveform models (wav2vec 2.0, HuBERT: `features.modalities`) need the signal itself, so the
same 16 kHz mono signal is kept, compactly: 16-bit PCM (samples clipped to [-1, 1], rounded to
1/32767) in a FLAC stream (lossless, about half the size of raw 16-bit), stored as the bytes
`waveform_flac` inside the same `.npz`. 15 s of audio cost about 0.25 MB instead of 0.96 MB of
float32; the log-mels are unchanged.

`load(work, video_id)` returns the examples, `load(work, video_id, kind="waveform")` the
float32 waveform `[n]` at 16 kHz (unpadded, as decoded); both None for a video without audio.
An output written before waveforms were kept raises `OutdatedOutput` for `kind="waveform"`
(one line: run the audio stage again), and the stage redoes such outputs on its next run
(`redone N (no waveform)` in its summary line; `outdated` checks the zip's directory, one small
read per video).

Audio holding NaN or infinite samples (a damaged or hand-made float track) is that video's
failure ("non-finite log-mel"), never stored: non-finite values stop where they enter. Decoded
audio longer or shorter than the container declares (by more than `LENGTH_TOLERANCE`) is kept
as decoded, with a row in `W/audio/warnings.csv`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

from extract import cli, durable, logmel, media, stage
from extract.layout import Work
from extract.logmel import log_mel_examples, log_mel_examples_padded  # noqa: F401  (the front end's public name)
from extract.manifest import Video

NAME, SUFFIX = "audio", ".npz"
NO_AUDIO_NOTE = "without an audio stream (recorded as missing audio)"
PADDED_NOTE = "with audio shorter than 0.96 s (zero-padded to one example)"
WAVEFORM_RATE = logmel.SAMPLE_RATE   # 16 kHz
KINDS = ("log_mel", "waveform")
NO_WAVEFORM = "no waveform"          # why an output of an earlier version is redone


class OutdatedOutput(ValueError):
    """An audio output written before the stage kept waveforms."""


def _pcm16(x16k: np.ndarray) -> np.ndarray:
    """The stored 16-bit samples of a float signal: clipped to [-1, 1], times 32767, rounded."""
    return np.round(np.clip(np.asarray(x16k, np.float64), -1.0, 1.0) * 32767.0).astype(np.int16)


def _flac_writer(target):
    """A `soundfile.SoundFile` writing the stored FLAC stream (what `encode_waveform` makes) piece by piece."""
    import soundfile

    return soundfile.SoundFile(target, "w", samplerate=WAVEFORM_RATE, channels=1, format="FLAC", subtype="PCM_16")


def encode_waveform(x16k: np.ndarray) -> np.ndarray:
    """float 16 kHz mono signal -> the bytes (uint8 array) of a 16-bit FLAC stream."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, _pcm16(x16k), WAVEFORM_RATE, format="FLAC", subtype="PCM_16")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def decode_waveform(data: np.ndarray) -> np.ndarray:
    """`encode_waveform`'s bytes -> float32 `[n]` in [-1, 1] (the int16 samples / 32767)."""
    import soundfile

    pcm, rate = soundfile.read(io.BytesIO(np.asarray(data, np.uint8).tobytes()), dtype="int16")
    if rate != WAVEFORM_RATE:
        raise ValueError(f"stored waveform is at {rate} Hz, expected {WAVEFORM_RATE}")
    return pcm.astype(np.float32) / np.float32(32767.0)


@dataclasses.dataclass(frozen=True)
class AudioSettings:
    timeout: float = stage.timeout_option()


# Decoded and declared audio lengths may differ by this much without a warning (codec priming
# and padding are a few hundredths of a second).
LENGTH_TOLERANCE = 0.1
_COPY_BLOCK = 1 << 20


def declared_seconds(info: media.MediaInfo, video: Video) -> float | None:
    """Seconds of audio the container declares for the clip (None when it says nothing)."""
    total = info.audio_duration or info.duration
    end = video.end if video.end is not None else total
    if end is None:
        return None
    if total is not None:
        end = min(end, total)
    return max(0.0, end - (video.start or 0.0))


def write_npz(f, members: dict) -> None:
    """An `.npz` as `np.savez` writes it (stored zip members `<name>.npy`), to the open file `f`.

    A member is an array (or scalar), or `(dtype, shape, path)`: a file holding the C-order bytes
    of such an array, copied in blocks, so no member has to be in memory whole."""
    from numpy.lib import format as npy

    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, value in members.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as m:
                if not isinstance(value, tuple):
                    npy.write_array(m, np.asanyarray(value), allow_pickle=False)
                    continue
                dtype, shape, path = value
                npy.write_array_header_1_0(m, {"descr": npy.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, m, _COPY_BLOCK)


def _decode(video: Video, info: media.MediaInfo, settings: AudioSettings, chunk_seconds: float | None,
            examples_file, flac) -> tuple[int, bool]:
    """Decode, mix, resample, log-mel and FLAC-encode the audio a piece at a time, appending the
    float32 examples to `examples_file` and the samples to `flac`; `(examples, padded)`."""
    rate, channels = info.audio_rate or 44100, info.audio_channels or 2
    to16k, mel = logmel.Mono16k(rate), logmel.ExampleStream()

    def add(x16k: np.ndarray, examples: np.ndarray) -> None:
        if not np.isfinite(examples).all():
            raise ValueError("non-finite log-mel: the front end produced NaN or infinite values; nothing stored")
        examples_file.write(np.ascontiguousarray(examples, "<f4").tobytes())
        flac.write(_pcm16(x16k))

    decoded = values = bad = 0
    chunk = None if chunk_seconds is None else max(1, int(round(chunk_seconds * rate)))
    pieces = media.audio_chunks(video.path, channels, rate, start=video.start, end=video.end,
                                timeout=settings.timeout, chunk_samples=chunk)
    with contextlib.closing(pieces):
        for piece in pieces:
            decoded, values = decoded + piece.shape[0], values + piece.size
            bad += int(np.count_nonzero(~np.isfinite(piece)))
            if not bad:   # past the first bad sample the rest is only counted, for the message
                x16k = to16k(piece)
                add(x16k, mel.push(x16k))
    if bad:
        raise ValueError(f"non-finite log-mel: the decoded audio holds {bad} NaN or infinite sample(s) "
                         f"of {values}; nothing stored")
    declared = declared_seconds(info, video)
    if declared is not None and abs(decoded / rate - declared) > LENGTH_TOLERANCE:
        kind = "truncated or damaged" if decoded / rate < declared else "container understates the length"
        stage.warn(f"{kind}: the container declares {declared:.2f} s of audio, {decoded / rate:.2f} s decode; "
                   f"the examples cover the {decoded / rate:.2f} s decoded")
    x16k = to16k.flush()
    add(x16k, mel.push(x16k))
    tail, padded = mel.finish(pad_short=True)
    add(np.zeros(0), tail)
    return mel.count, padded


def process(video: Video, out: Path, settings: AudioSettings, chunk_seconds: float | None = None) -> str | None:
    """One video's `.npz`, in memory bounded by `chunk_seconds` of audio (default: the piece of
    `media.audio_chunks`, a minute) whatever the file's length. The examples and the FLAC stream
    go to temporaries beside `out` (removed after, or by the next run if this process dies) and
    are copied into the `.npz`."""
    info = media.probe(video.path, timeout=settings.timeout)
    if not info.has_audio:
        stage.write_output(out, lambda f: write_npz(f, dict(
            examples=np.zeros((0, 96, 64), np.float32), has_audio=np.bool_(False), padded=np.bool_(False),
            waveform_flac=np.zeros(0, np.uint8))))
        return NO_AUDIO_NOTE
    examples_tmp = durable.temp_path(out.with_name(out.name + ".examples"))
    flac_tmp = durable.temp_path(out.with_name(out.name + ".flac"))
    try:
        with open(examples_tmp, "wb") as examples_file, _flac_writer(str(flac_tmp)) as flac:
            count, padded = _decode(video, info, settings, chunk_seconds, examples_file, flac)
        members = dict(examples=(np.float32, (count, logmel.EXAMPLE_FRAMES, logmel.NUM_BANDS), examples_tmp),
                       has_audio=np.bool_(True), padded=np.bool_(padded),
                       waveform_flac=(np.uint8, (flac_tmp.stat().st_size,), flac_tmp))
        stage.write_output(out, lambda f: write_npz(f, members))
    finally:
        examples_tmp.unlink(missing_ok=True)
        flac_tmp.unlink(missing_ok=True)
    return PADDED_NOTE if padded else None


def outdated(out: Path) -> str | None:
    """Why a current output must still be redone: written before waveforms were kept."""
    try:
        with zipfile.ZipFile(out) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return None  # not this check's business: the feature stage reports an unreadable output
    return None if "waveform_flac.npy" in names else NO_WAVEFORM


STAGE = stage.Stage(NAME, SUFFIX, process, upstream=("frames",), settings_type=AudioSettings, outdated=outdated)


def load(work, video_id: str, kind: str = "log_mel") -> np.ndarray | None:
    """One video's audio, or None when it has no audio stream.

    kind "log_mel" (default): float32 `[N, 96, 64]` log-mel examples; "waveform": float32 `[n]`,
    the 16 kHz mono signal."""
    if kind not in KINDS:
        raise ValueError(f"audio.load: kind must be one of {KINDS}, got {kind!r}")
    path = Work(work).output(NAME, video_id, SUFFIX)
    if not path.is_file():
        raise FileNotFoundError(f"no audio features for {video_id!r} in {Path(work) / NAME} (run the audio stage first)")
    with np.load(path) as z:
        if not bool(z["has_audio"]):
            return None
        if kind == "log_mel":
            return z["examples"]
        if "waveform_flac" not in z.files:
            raise OutdatedOutput(f"the audio output of {video_id!r} was written before the audio stage kept "
                                 f"waveforms; run the audio stage again (it redoes such outputs)")
        return decode_waveform(z["waveform_flac"])


def main(argv=None) -> int:
    description = "VGGish log-mel examples [N, 96, 64] and the 16 kHz waveform per video."
    args = stage.stage_parser(STAGE, description).parse_args(argv)
    return cli.run(lambda: stage.run_command(STAGE, args), verbose=args.verbose, level=stage.LOG_LEVEL)


if __name__ == "__main__":
    # Run through the importable module so worker processes can unpickle the stage by name.
    from extract.audio import main as _main

    sys.exit(_main())
