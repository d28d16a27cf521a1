"""eGeMAPS: the `egemaps` modality, openSMILE's 88 eGeMAPSv02 functionals per window of the audio.

The standard hand-crafted description of emotional speech (Eyben et al., 2016), computed by
audEERING's `opensmile` package (`features.egemaps`) on the audio stage's stored 16 kHz mono
waveform: one row of 88 values (openSMILE's column order, `features.egemaps.FEATURE_NAMES`) per
window of `--egemaps-window` seconds, every `--egemaps-hop` seconds. Row r is exactly
`opensmile.Smile(eGeMAPSv02, Functionals).process_signal(wave[r*hop : r*hop + window], 16000)`
(the window rules, e.g. for the last, shorter window, are `features.egemaps.windows`).

Defaults 4 s windows every 2 s: eGeMAPS functionals were designed for utterance-level segments
of a few seconds (its pitch, jitter and shimmer statistics need several voiced syllables to be
stable), a DMVER video of 15 s gives 7 rows for the sequence heads, each window overlaps the
next by half so no phrase is cut by every window, and the cost (about 1.4 s of one core per
15-s video, `features.egemaps`) stays below the frame stages'.

There is no network and no checkpoint: the rows are computed while loading the input (in the
DataLoader or Dask workers, in parallel), and the "network" passes them through. `--weights
random` does not apply (openSMILE is always the real one, no banner); the cache records the
openSMILE version and a digest of its configuration files as its checkpoint, so a bundle refuses
features of another openSMILE.

A video without an audio stream, whose track is silent (every stored sample zero) or shorter than
openSMILE's shortest segment (0.06 s) is missing with that reason, never zero-filled.

openSMILE is audEERING's, under its research licence: free for research and education,
commercial use needs a licence from audEERING. It is the optional extra `egemaps`
(`pip install 'dmver-bench[egemaps]'`); without it the modality says so in one line and
`make features` skips it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from extract import audio as audio_stage
from extract.manifest import Video
from features import egemaps
from features.modalities import Loaded, Missing, Modality, Network, Option, StageSource
from features.zoo._common import audio_windows, generator, tensor_of

WINDOW_S, HOP_S = 4.0, 2.0

# ----------------------------------------------------------------------------- the input


@dataclasses.dataclass(frozen=True)
class EgemapsSource(StageSource):
    """The audio stage's 16 kHz waveform -> eGeMAPS rows [R, 88] (computed here, in the loader)."""

    def load(self, work: Path, video: Video, options: dict):
        wave = super().load(work, video, options)
        if isinstance(wave, Missing):
            return wave
        if not np.any(np.abs(wave) >= 0.5 / 32767):
            return Missing("silent audio track (every sample is zero)")
        if len(wave) < egemaps.MIN_SAMPLES:
            return Missing(f"audio track of {len(wave) / egemaps.RATE:.3f} s, shorter than the "
                           f"{egemaps.MIN_SAMPLES / egemaps.RATE:.2f} s eGeMAPS needs")
        return egemaps.egemaps_rows(wave, float(options["egemaps_window"]), float(options["egemaps_hop"]))

    def settings(self, work: Path, options: dict) -> dict:
        check_options(options)   # before any video: a bad window is the run's error, not every video's
        return {**super().settings(work, options), "window_s": float(options["egemaps_window"]),
                "hop_s": float(options["egemaps_hop"]), "feature_set": "eGeMAPSv02", "feature_level": "Functionals"}


def check_options(options: dict) -> None:
    """A window openSMILE can describe (at least 0.06 s) and a positive hop, or ValueError."""
    window, hop = float(options["egemaps_window"]), float(options["egemaps_hop"])
    if not window * egemaps.RATE >= egemaps.MIN_SAMPLES:
        raise ValueError(f"egemaps: --egemaps-window must be at least {egemaps.MIN_SAMPLES / egemaps.RATE:.2f} s, "
                         f"got {window}")
    if not round(hop * egemaps.RATE) >= 1:
        raise ValueError(f"egemaps: --egemaps-hop must be a positive number of seconds, got {hop}")


def prepare(rows) -> torch.Tensor:
    """float32 eGeMAPS rows [R, 88] -> the same values as a tensor."""
    t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    if t.dim() != 2 or t.shape[1] != egemaps.DIM or t.shape[0] == 0:
        raise ValueError(f"egemaps: expected rows [R, {egemaps.DIM}] with R > 0, got {tuple(t.shape)}")
    return t.clone()

# ----------------------------------------------------------------------------- the "network"


@functools.lru_cache(maxsize=1)
def config_digest() -> tuple[str, str]:
    """(openSMILE version, SHA-256 over its version and every configuration file it ships)."""
    import importlib.metadata

    import opensmile

    version = importlib.metadata.version("opensmile")
    root = Path(opensmile.__file__).parent / "core" / "config"
    digest = hashlib.sha256(f"opensmile {version}".encode())
    for path in sorted(root.rglob("*.conf")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return version, digest.hexdigest()


def passthrough(options: dict, device: torch.device) -> Loaded:
    """No weights: the rows are openSMILE's; the checkpoint names openSMILE's version and configuration."""
    version, digest = config_digest()
    return Loaded(nn.Identity(), f"opensmile {version} eGeMAPSv02 Functionals", digest, egemaps.DIM)


NETWORK = Network("openSMILE eGeMAPSv02", egemaps.DIM, "rows", lambda model, x: model(x), f"[R, {egemaps.DIM}]",
                  tensor_of(2, lambda x: x.shape[1] == egemaps.DIM), packaged=passthrough,
                  requires=("opensmile",), extra="egemaps",
                  weights_note="none: openSMILE's eGeMAPSv02 configuration (optional extra `egemaps`)")

_SOURCE = EgemapsSource(audio_stage, none_means="no audio stream", kind="waveform", options=(
    Option("egemaps_window", WINDOW_S, "egemaps: window length in seconds (one row of 88 functionals each)"),
    Option("egemaps_hop", HOP_S, "egemaps: seconds between the starts of consecutive windows"),
))

# ----------------------------------------------------------------------------- example input


def example(videos: int, frames: int, size: int, seed: int) -> list:
    """Rows [N, 88] on eGeMAPS's scales (a few units to tens; N from `frames`)."""
    gen = generator(seed)
    return [torch.randn(audio_windows(frames), egemaps.DIM, generator=gen).abs() * 10 for _ in range(videos)]

# ----------------------------------------------------------------------------- entry


egemaps_modality = Modality(
    name="egemaps", summary="eGeMAPSv02 functionals (openSMILE) per audio window", source=_SOURCE,
    prepare=prepare, network=NETWORK,
    cached="`[R, 88]`, one row per window (4 s every 2 s by default; `window_s`, `hop_s` in the cache)",
    batch={"cpu": 4096, "cuda": 4096}, videos_per_call={"cpu": 16, "cuda": 16},
    example=example, label="eGeMAPS", column="Flow/Audio", in_all=True)

MODALITIES = (egemaps_modality,)
