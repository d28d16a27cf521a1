"""HSEmotion's AffectNet EfficientNet-B0 on each face crop: the `face_affectnet` modality.

Optional (not in `make features`; `make weights NAMES=face_affectnet`, then `MODALITIES=
face_affectnet`): the network is `features.affectnet`, its architecture from the `timm` extra.
Input: the faces stage's crops of the frames where a face was found; a video without a face in
any frame is `Missing("no face")`, never zero rows. One 1290-d row per frame with a face: the 8
AffectNet emotion probabilities (`affectnet.EMOTIONS` order), valence, arousal, then the 1280-d
pooled features the classifier reads.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from extract import provenance
from extract.layout import Work
from extract.manifest import Video
from features import affectnet
from features.modalities import Missing, Modality, Network, Source, WeightFile
from features.zoo._common import generator, tensor_of

# ----------------------------------------------------------------------------- input: the faces stage

NAME, SUFFIX = "faces", ".npz"     # W/faces/<file_key(id)>.npz


class Track(NamedTuple):
    """One video's faces stage output: crops [T, S, S, 3] uint8 RGB, boxes [T, 4], scores [T],
    found [T] bool (frames without a face have found False)."""
    crops: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    found: np.ndarray


def load_track(work, video_id: str):
    """The faces stage's output of one video: through `extract.faces.load` when the faces stage
    provides it, else read from `W/faces/<key>.npz` by the stage's documented keys (crops,
    boxes, scores, found)."""
    from extract import faces

    reader = getattr(faces, "load", None)
    if reader is not None:
        return reader(work, video_id)
    path = Work(work).output(NAME, video_id, SUFFIX)
    if not path.is_file():
        raise FileNotFoundError(f"no face track for {video_id!r} in {Work(work).stage(NAME)} "
                                "(run the faces stage first)")
    with np.load(path) as z:
        return Track(*(z[k] for k in Track._fields))


@dataclasses.dataclass(frozen=True)
class FaceCrops(Source):
    """Input = the crops of the frames where the faces stage found a face."""
    name = NAME
    stages = (NAME,)

    def describe(self) -> str:
        return f"`W/{NAME}/` (crops of frames with a face)"

    def _output(self, work: Path, video: Video) -> Path:
        return Work(work).output(NAME, video.id, SUFFIX)

    def available(self, work: Path, video: Video) -> bool:
        return self._output(work, video).is_file()

    def provenance(self, work: Path, video: Video, options: dict) -> dict | None:
        try:
            return {"stage": NAME, **provenance.provenance(self._output(work, video))}
        except OSError:
            return None

    def stale(self, work: Path, video: Video) -> str | None:
        reason = provenance.stale_reason(self._output(work, video), video)
        return reason if reason in ("source changed", "output changed") else None

    def load(self, work: Path, video: Video, options: dict):
        track = load_track(work, video.id)
        if track is None:
            return Missing("no face")
        crops, found = np.asarray(track.crops), np.asarray(track.found, dtype=bool)
        if found.ndim != 1 or len(crops) != len(found):
            raise ValueError(f"face track of {video.id!r}: {len(crops)} crops but found flags of shape {found.shape}")
        if not found.any():
            return Missing("no face")
        return crops[found]

    def settings(self, work: Path, options: dict) -> dict:
        path = Work(work).stage(NAME) / "settings.json"
        return {"stage": NAME, "frames": "found only",
                "stage_settings": json.loads(path.read_text()) if path.is_file() else {}}


# ----------------------------------------------------------------------------- weights file

AFFECTNET_FILE = WeightFile(
    affectnet.WEIGHT_FILE, affectnet.URL,
    "EfficientNet-B0 on AffectNet, 8 emotions + valence + arousal (HSEmotion enet_b0_8_va_mtl)",
    affectnet.load, affectnet.summary, ("face_affectnet", "affectnet", "hsemotion"), git_blob=affectnet.GIT_BLOB)

# ----------------------------------------------------------------------------- network

_SHAPE = (3, affectnet.INPUT_SIZE, affectnet.INPUT_SIZE)
NETWORK = Network("EfficientNet", affectnet.ROW_DIM, "rows", affectnet.affect_rows, "[F, 3, 224, 224]",
                  tensor_of(4, lambda x: tuple(x.shape[1:]) == _SHAPE), build=affectnet.build,
                  file=AFFECTNET_FILE, own_init=True)

# ----------------------------------------------------------------------------- prepare
# affectnet.preprocess: uint8 RGB crops [F, S, S, 3] -> [F, 3, 224, 224], ImageNet mean/std.

# ----------------------------------------------------------------------------- example input


def example(videos: int, frames: int, size: int, seed: int) -> list:
    """Normalised face crops [frames, 3, 224, 224] (the network's own size: `size` does not apply)."""
    gen = generator(seed)
    return [torch.randn(frames, *_SHAPE, generator=gen) for _ in range(videos)]

# ----------------------------------------------------------------------------- entry


face_affectnet = Modality(
    name="face_affectnet", summary="HSEmotion EfficientNet-B0 (AffectNet) on each face crop", source=FaceCrops(),
    prepare=affectnet.preprocess, network=NETWORK,
    cached="`[F, 1290]`, one row per frame with a face: 8 emotion probabilities, valence, arousal, "
           "1280-d pooled features",
    batch={"cpu": 32, "cuda": 256}, videos_per_call={"cpu": 1, "cuda": 4},
    example=example, label="AffectNet face", column="Face", default=False)

MODALITIES = (face_affectnet,)
