"""MTCNN face detection and face tracks (extract.faces): strict weights, track rules, crops, fetch.

With the real weights in weights/mtcnn (make weights NAMES=face) the boxes found in scikit-image's
astronaut photograph are compared with facenet-pytorch 2.6.0's own `MTCNN.detect` (numbers below,
measured on the build machine with that package), and a moving, turning, zooming clip made from
the photo must give one face track whose crops the expression network calls happy.
"""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from extract import faces

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
REAL = all((WEIGHTS / faces.SUBFOLDER / name).is_file() for name, _ in faces.NETS)
real = pytest.mark.skipif(not REAL, reason=f"{WEIGHTS / faces.SUBFOLDER} absent (make weights NAMES=face)")
# facenet_pytorch.MTCNN(keep_all=True).detect(skimage.data.astronaut()) with facenet-pytorch 2.6.0
REFERENCE_ASTRONAUT = np.array([[181.05, 62.16, 267.75, 172.05]])


def random_states(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    return {name: cls().state_dict() for name, cls in faces.NETS}


def write_weights(folder: Path, states: dict[str, dict[str, torch.Tensor]]) -> Path:
    (folder / faces.SUBFOLDER).mkdir(parents=True, exist_ok=True)
    for name, state in states.items():
        torch.save(state, folder / faces.SUBFOLDER / name)
    return folder


def test_the_layout_is_the_published_one(tmp_path):
    nets = faces.load_mtcnn(write_weights(tmp_path, random_states()))
    assert [type(n).__name__ for n in nets] == ["PNet", "RNet", "ONet"] and not any(n.training for n in nets)
    counts = [sum(p.numel() for p in n.parameters()) for n in nets]
    assert counts == [6632, 100178, 389040]   # pnet.pt, rnet.pt, onet.pt of facenet-pytorch 2.6.0


@pytest.mark.parametrize("damage, message", [
    (lambda s: s["rnet.pt"].pop("dense4.bias"), r"rnet\.pt: not RNet's layout \(missing \['dense4.bias'\]"),
    (lambda s: s["pnet.pt"].update(extra=torch.zeros(1)), r"unexpected \['extra'\]"),
    (lambda s: s["onet.pt"].update({"dense6_1.weight": torch.zeros(3, 256)}), r"mis-shaped \['dense6_1.weight'\]"),
    (lambda s: s["pnet.pt"]["prelu2.weight"].fill_(float("nan")), r"NaN or infinite values in \['prelu2.weight'\]"),
])
def test_wrong_weights_are_refused(tmp_path, damage, message):
    states = random_states()
    damage(states)
    write_weights(tmp_path, states)
    with pytest.raises(faces.FaceWeightsError, match=message):
        faces.load_mtcnn(tmp_path)


def test_missing_or_damaged_files_are_named(tmp_path):
    with pytest.raises(faces.FaceWeightsError, match=r"mtcnn/pnet\.pt: no such file"):
        faces.load_mtcnn(tmp_path)
    write_weights(tmp_path, random_states())
    (tmp_path / "mtcnn" / "onet.pt").write_bytes(b"not a torch file")
    with pytest.raises(faces.FaceWeightsError, match=r"onet\.pt: cannot be read"):
        faces.load_mtcnn(tmp_path)


def test_detect_checks_its_input_and_answers_per_frame(tmp_path):
    nets = faces.load_mtcnn(write_weights(tmp_path, random_states(1)))
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 80, 3), dtype=np.uint8)
    found = faces.detect(nets, frames, thresholds=(0.0, 0.0, 0.0))   # random nets: let boxes through
    assert len(found) == 3
    for boxes, scores in found:
        assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,) and scores.shape == (len(boxes),)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert np.all(np.diff(areas) <= 0), "largest box first"
    assert sum(len(b) for b, _ in found) > 0
    assert all(len(b) == 0 for b, _ in faces.detect(nets, frames, thresholds=(1.1, 0.7, 0.7)))
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        faces.detect(nets, frames[0])


def _found(*boxes_per_frame):
    return [(np.array(b, np.float32).reshape(-1, 4), np.ones(len(b), np.float32)) for b in boxes_per_frame]


def test_the_track_follows_one_face_and_fills_gaps():
    big, small_left, small_right = [0, 0, 50, 50], [0, 60, 20, 80], [80, 60, 100, 80]
    near_big = [5, 5, 55, 55]
    found = _found([], [big, small_right], [], [small_left, near_big], [], [])
    track = faces.choose_track(found)
    assert track.tolist() == [big, big, big, near_big, near_big, near_big]   # frame 2: tie -> the earlier frame
    assert faces.choose_track(_found([], [])) is None


def test_crops_are_squares_around_the_box_with_margin():
    frame = np.zeros((100, 120, 3), np.uint8)
    frame[40:60, 50:70] = 255                                  # a white 20x20 "face"
    crops = faces.crop_faces(frame[None], np.array([[50, 40, 70, 60]], np.float32), size=26, margin=0.15)
    assert crops.shape == (1, 26, 26, 3) and crops.dtype == np.uint8
    white = crops[0, :, :, 0] > 127
    assert white[3:23, 3:23].all() and not white[:2].any() and not white[:, :2].any()   # 3 px margin of 26
    edge = faces.crop_faces(frame[None], np.array([[100, 80, 120, 100]], np.float32), size=16)
    assert edge.shape == (1, 16, 16, 3)                         # past the frame's corner: edge pixels repeated


def _fake_wheel(folder: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(folder / "facenet_pytorch-2.6.0-py3-none-any.whl", "w") as z:
        for name, data in files.items():
            z.writestr(f"facenet_pytorch/data/{name}", data)
        z.writestr("facenet_pytorch/__init__.py", "")
        z.writestr("facenet_pytorch-2.6.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: facenet-pytorch\n"
                   "Version: 2.6.0\n")
        z.writestr("facenet_pytorch-2.6.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
        z.writestr("facenet_pytorch-2.6.0.dist-info/RECORD", "")


def _saved(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_fetch_takes_the_files_out_of_the_wheel(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    files = {name: _saved(state) for name, state in random_states(2).items()}
    _fake_wheel(index, files)
    local = ("--no-index", "--find-links", str(index))
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    wrong = dict(hashes, **{"rnet.pt": "0" * 64})
    with pytest.raises(faces.FaceWeightsError, match="rnet.pt from .* is not the pinned"):
        faces.fetch_mtcnn(tmp_path / "w", pip_args=local, sha256=wrong, log=lambda m: None)
    assert not (tmp_path / "w").exists()
    folder = faces.fetch_mtcnn(tmp_path / "w", pip_args=local, sha256=hashes, log=lambda m: None)
    assert sorted(p.name for p in folder.iterdir()) == ["onet.pt", "pnet.pt", "rnet.pt"]
    assert all((folder / n).read_bytes() == d for n, d in files.items())
    faces.load_mtcnn(tmp_path / "w")
    logged = []
    faces.fetch_mtcnn(tmp_path / "w", pip_args=("--no-index",), sha256=hashes, log=logged.append)
    assert logged == [f"{folder}: MTCNN weights present and valid, skipped"]   # no pip call needed


def test_fetch_refuses_files_that_do_not_load(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    states = random_states(3)
    states["onet.pt"].pop("dense6_3.bias")
    files = {name: _saved(state) for name, state in states.items()}
    _fake_wheel(index, files)
    with pytest.raises(faces.FaceWeightsError, match="missing"):
        faces.fetch_mtcnn(tmp_path / "w", pip_args=("--no-index", "--find-links", str(index)),
                          sha256={n: hashlib.sha256(d).hexdigest() for n, d in files.items()}, log=lambda m: None)
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- the published weights


def turning_clip(frames: int = 24, size: int = 224) -> np.ndarray:
    """The astronaut photo zoomed (face 40 to 110 px wide), turned (+-15 degrees) and moved, as JPEG frames."""
    photo = skimage.data.astronaut()
    out = []
    for t in range(frames):
        phase = t / (frames - 1)
        scale = (40 + 70 * phase) / 90
        affine = cv2.getRotationMatrix2D((224, 117), 15 * np.sin(2 * np.pi * phase), scale)
        affine[:, 2] += [size / 2 - 224 + 30 * np.sin(4 * np.pi * phase), size / 2 - 117]
        frame = cv2.warpAffine(photo, affine, (size, size), borderMode=cv2.BORDER_REPLICATE)
        out.append(cv2.imdecode(cv2.imencode(".jpg", frame)[1], cv2.IMREAD_UNCHANGED))
    return np.stack(out)


@real
def test_real_weights_find_the_astronaut_as_facenet_pytorch_does():
    boxes, scores = faces.detect(faces.load_mtcnn(WEIGHTS), skimage.data.astronaut()[None])[0]
    assert np.abs(boxes - REFERENCE_ASTRONAUT).max() < 0.05 and scores[0] > 0.99


@real
def test_real_weights_track_the_face_through_a_moving_clip():
    clip = turning_clip()
    crops, boxes = faces.face_track(faces.load_mtcnn(WEIGHTS), clip, size=96)
    assert crops.shape == (len(clip), 96, 96, 3)
    widths = boxes[:, 2] - boxes[:, 0]
    assert widths[0] < 50 < 100 < widths[-1]
    expression_file = WEIGHTS / "fer2013_mini_xception.hdf5"
    if expression_file.is_file():
        from features import expression
        with torch.inference_mode():
            probs = expression.load_model(expression_file)(expression.preprocess(crops))
        happy = (probs.argmax(1) == expression.EMOTIONS.index("happy")).float().mean()
        assert happy >= 0.9
