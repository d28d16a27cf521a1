"""Audio stage: VGGish log-mel examples per video.

`python -m extract.audio --manifest M --work W` writes `W/audio/<key>.npz` with `examples`,
float32 `[N, 96, 64]`, and two flags: `has_audio` (False when the file has no audio stream:
recorded as missing audio, not as a failure) and `padded` (True when the audio was shorter than
one 0.96 s example and was zero-padded to one). The front end is `log_mel_examples`
(extract/logmel.py, FACTS.md section 4); the first audio stream is decoded by FFmpeg at its
own rate and channels, and mixed to mono and resampled to 16 kHz by the front end.
`load(work, video_id)` returns the examples, or None for a video without audio.

Audio holding NaN or infinite samples (a damaged or hand-made float track) is that video's
failure ("non-finite log-mel"), never stored: non-finite values stop where they enter. Decoded
audio longer or shorter than the container declares (by more than `LENGTH_TOLERANCE`) is kept
as decoded, with a row in `W/audio/warnings.csv`.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from extract import media, stage
from extract.logmel import log_mel_examples, log_mel_examples_padded  # noqa: F401  (the front end's public name)
from extract.manifest import Video

NAME, SUFFIX = "audio", ".npz"
NO_AUDIO_NOTE = "without an audio stream (recorded as missing audio)"
PADDED_NOTE = "with audio shorter than 0.96 s (zero-padded to one example)"


@dataclasses.dataclass(frozen=True)
class AudioSettings:
    timeout: float = media.DEFAULT_TIMEOUT


# Decoded and declared audio lengths may differ by this much without a warning (codec priming
# and padding are a few hundredths of a second).
LENGTH_TOLERANCE = 0.1


def declared_seconds(info: media.MediaInfo, video: Video) -> float | None:
    """Seconds of audio the container declares for the clip (None when it says nothing)."""
    total = info.audio_duration or info.duration
    end = video.end if video.end is not None else total
    if end is None:
        return None
    if total is not None:
        end = min(end, total)
    return max(0.0, end - (video.start or 0.0))


def process(video: Video, out: Path, settings: AudioSettings) -> str | None:
    info = media.probe(video.path, timeout=settings.timeout)
    if not info.has_audio:
        examples, padded, note = np.zeros((0, 96, 64), np.float32), False, NO_AUDIO_NOTE
    else:
        rate = info.audio_rate or 44100
        waveform = media.decode_audio(video.path, info.audio_channels or 2, rate,
                                      start=video.start, end=video.end, timeout=settings.timeout)
        bad = int(np.count_nonzero(~np.isfinite(waveform)))
        if bad:
            raise ValueError(f"non-finite log-mel: the decoded audio holds {bad} NaN or infinite sample(s) "
                             f"of {waveform.size}; nothing stored")
        declared, decoded = declared_seconds(info, video), len(waveform) / rate
        if declared is not None and abs(decoded - declared) > LENGTH_TOLERANCE:
            kind = "truncated or damaged" if decoded < declared else "container understates the length"
            stage.warn(f"{kind}: the container declares {declared:.2f} s of audio, {decoded:.2f} s decode; "
                       f"the examples cover the {decoded:.2f} s decoded")
        examples, padded = log_mel_examples_padded(waveform, rate, pad_short=True)
        if not np.isfinite(examples).all():
            raise ValueError("non-finite log-mel: the front end produced NaN or infinite values; nothing stored")
        note = PADDED_NOTE if padded else None
    stage.write_output(out, lambda f: np.savez(f, examples=examples, has_audio=np.bool_(info.has_audio),
                                               padded=np.bool_(padded)))
    return note


STAGE = stage.Stage(NAME, SUFFIX, process, upstream=("frames",), settings_type=AudioSettings)


def load(work, video_id: str) -> np.ndarray | None:
    """float32 `[N, 96, 64]` log-mel examples of one video, or None when it has no audio."""
    path = stage.output_path(work, NAME, video_id, SUFFIX)
    if not path.is_file():
        raise FileNotFoundError(f"no audio features for {video_id!r} in {Path(work) / NAME} (run the audio stage first)")
    with np.load(path) as z:
        return z["examples"] if bool(z["has_audio"]) else None


def main(argv=None) -> int:
    parser = stage.stage_parser(NAME, "VGGish log-mel examples [N, 96, 64] per video.")
    args = parser.parse_args(argv)
    return stage.run_command(STAGE, args, AudioSettings(timeout=args.timeout))


if __name__ == "__main__":
    # Run through the importable module so worker processes can unpickle the stage by name.
    from extract.audio import main as _main

    sys.exit(_main())
