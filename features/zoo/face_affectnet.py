"""HSEmotion's AffectNet EfficientNet-B0 on each face crop: the `face_affectnet` modality.

Optional (not in `make features`; `make weights NAMES=face_affectnet`, then `MODALITIES=
face_affectnet`): the network is `features.affectnet`, its architecture from the `timm` extra.
Input: the faces stage's crops of the frames where a face was found; a video without a face in
any frame is `Missing("no face")`, never zero rows. One 1290-d row per frame with a face: the 8
AffectNet emotion probabilities (`affectnet.EMOTIONS` order), valence, arousal, then the 1280-d
pooled features the classifier reads.
"""
from __future__ import annotations

import torch

from extract import faces as faces_stage
from features import affectnet
from features.modalities import Modality, Network, WeightFile
from features.zoo._common import generator, tensor_of
from features.zoo.face import FaceSource, found_crops

# ----------------------------------------------------------------------------- input
# The faces stage's track, as for `face` (`features.zoo.face.FaceSource`: a video without a face in
# any frame is missing, "no face"); `prepare` keeps the crops of the frames with a face.


def prepare(track) -> torch.Tensor:
    """A face track -> [n, 3, 224, 224], one per frame with a face (`affectnet.preprocess`)."""
    return affectnet.preprocess(found_crops(track))


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

# ----------------------------------------------------------------------------- example input


def example(videos: int, frames: int, size: int, seed: int) -> list:
    """Normalised face crops [frames, 3, 224, 224] (the network's own size: `size` does not apply)."""
    gen = generator(seed)
    return [torch.randn(frames, *_SHAPE, generator=gen) for _ in range(videos)]

# ----------------------------------------------------------------------------- entry


face_affectnet = Modality(
    name="face_affectnet", summary="HSEmotion EfficientNet-B0 (AffectNet) on each face crop", source=FaceSource(faces_stage),
    prepare=prepare, network=NETWORK,
    cached="`[F, 1290]`, one row per frame with a face: 8 emotion probabilities, valence, arousal, "
           "1280-d pooled features",
    batch={"cpu": 32, "cuda": 256}, videos_per_call={"cpu": 1, "cuda": 4},
    example=example, label="AffectNet face", column="RGB", default=False)

MODALITIES = (face_affectnet,)
