"""Audio stage: VGGish log-mel examples per video.

`python -m extract.audio --manifest M --work W` writes `W/audio/<key>.npz` with `examples`,
float32 `[N, 96, 64]`, and two flags: `has_audio` (False when the file has no audio stream:
recorded as missing audio, not as a failure) and `padded` (True when the audio was shorter than
one 0.96 s example and was zero-padded to one). The front end is `log_mel_examples`
(extract/logmel.py, FACTS.md section 4); the first audio stream is decoded by FFmpeg at its
own rate and channels, and mixed to mono and resampled to 16 kHz by the front end.
`load(work, video_id)` returns the examples, or None for a video without audio.
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


def process(video: Video, out: Path, settings: AudioSettings) -> str | None:
    info = media.probe(video.path, timeout=settings.timeout)
    if not info.has_audio:
        examples, padded, note = np.zeros((0, 96, 64), np.float32), False, NO_AUDIO_NOTE
    else:
        waveform = media.decode_audio(video.path, info.audio_channels or 2, info.audio_rate or 44100,
                                      start=video.start, end=video.end, timeout=settings.timeout)
        examples, padded = log_mel_examples_padded(waveform, info.audio_rate or 44100, pad_short=True)
        note = PADDED_NOTE if padded else None
    stage.atomic_write(out, lambda f: np.savez(f, examples=examples, has_audio=np.bool_(info.has_audio),
                                               padded=np.bool_(padded)))
    return note


STAGE = stage.Stage(NAME, SUFFIX, process, upstream=("frames",))


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
