"""VGGish on the log-mel examples of the audio track: the `audio` modality (the seed's Audio+I3D row).

The AudioSet VGGish of harritaylor/torchvggish (`features.vggish`), 128-d per 0.96 s example;
`--pca` adds AudioSet's PCA post-processing (a second file).
"""
from __future__ import annotations

import torch

from extract import audio as audio_stage
from features import inputs
from features.modalities import Modality, Network, Option, PostProcessor, StageSource, WeightFile
from features.vggish import EMBEDDING_DIM, VGGish, VGGishPCA
from features.zoo._common import audio_windows, generator, tensor_of

# ----------------------------------------------------------------------------- weights files

_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
VGGISH_FILE = WeightFile("vggish-10086976.pth", _URL + "vggish-10086976.pth", "VGGish (AudioSet)",
                         VGGish.load_checkpoint, lambda m: "VGGish, 128-d embeddings", ("audio", "vggish"))
PCA_FILE = WeightFile("vggish_pca_params-970ea276.pth", _URL + "vggish_pca_params-970ea276.pth",
                      "VGGish PCA post-processing parameters", VGGishPCA.load_checkpoint,
                      lambda m: "VGGish PCA parameters, 128x128", ("pca", "vggish_pca"))

# ----------------------------------------------------------------------------- network


def random_pca(seed: int) -> VGGishPCA:
    """An orthogonal random projection with small means: PCA's shape and scale, seeded."""
    pca = VGGishPCA()
    gen = torch.Generator().manual_seed(seed + 1)
    q, _ = torch.linalg.qr(torch.randn(EMBEDDING_DIM, EMBEDDING_DIM, generator=gen, dtype=torch.float64))
    pca.pca_eigen_vectors.copy_(q.t().float())
    pca.pca_means.copy_(torch.rand(EMBEDDING_DIM, 1, generator=gen) * 0.5)
    return pca


NETWORK = Network("VGGish", EMBEDDING_DIM, "rows", lambda model, x: model(x), "[N, 1, 96, 64]",
                  tensor_of(4, lambda x: tuple(x.shape[1:]) == (1, 96, 64)), build=VGGish, file=VGGISH_FILE,
                  post=PostProcessor("pca", PCA_FILE, random_pca),
                  options=(Option("pca", False, "audio: AudioSet PCA post-processing of VGGish embeddings"),))

# ----------------------------------------------------------------------------- prepare
# inputs.log_mel_batch: float32 [N, 96, 64] -> [N, 1, 96, 64], values unchanged.

# ----------------------------------------------------------------------------- example input


def example(videos: int, frames: int, size: int, seed: int) -> list:
    """Log-mel examples [N, 1, 96, 64] around the usual log-mel level (N from `frames`)."""
    gen = generator(seed)
    return [torch.randn(audio_windows(frames), 1, 96, 64, generator=gen) * 2 - 4 for _ in range(videos)]

# ----------------------------------------------------------------------------- entry


audio = Modality(
    name="audio", summary="VGGish on log-mel examples",
    source=StageSource(audio_stage, none_means="no audio stream"), prepare=inputs.log_mel_batch,
    network=NETWORK, cached="`[N, 128]`, one row per 0.96 s example",
    batch={"cpu": 64, "cuda": 512}, videos_per_call={"cpu": 8, "cuda": 32},
    example=example, label="VGGish", column="Flow/Audio", in_all=True)

MODALITIES = (audio,)
