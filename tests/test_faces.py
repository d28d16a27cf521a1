"""MTCNN (extract.mtcnn) and the main-face track (extract.facetrack): strict weights, track rules, crops, fetch.

With the real weights (the session fixture `face_weights`, fetched as `make weights NAMES=face`
does) the boxes found in scikit-image's astronaut photograph are compared with facenet-pytorch
2.6.0's own `MTCNN.detect` (numbers below, measured on the build machine with that package), and
a moving, turning, zooming clip made from the photo must give one face track whose crops the
expression network calls happy.
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

from extract import facetrack, mtcnn

# facenet_pytorch.MTCNN(keep_all=True).detect(skimage.data.astronaut()) with facenet-pytorch 2.6.0
REFERENCE_ASTRONAUT = np.array([[181.05, 62.16, 267.75, 172.05]])


def random_states(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    return {name: cls().state_dict() for name, cls in mtcnn.NETS}


def write_weights(folder: Path, states: dict[str, dict[str, torch.Tensor]]) -> Path:
    (folder / mtcnn.SUBFOLDER).mkdir(parents=True, exist_ok=True)
    for name, state in states.items():
        torch.save(state, folder / mtcnn.SUBFOLDER / name)
    return folder


def test_the_layout_is_the_published_one(tmp_path):
    nets = mtcnn.load_mtcnn(write_weights(tmp_path, random_states()))
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
    with pytest.raises(mtcnn.FaceWeightsError, match=message):
        mtcnn.load_mtcnn(tmp_path)


def test_missing_or_damaged_files_are_named(tmp_path):
    with pytest.raises(mtcnn.FaceWeightsError, match=r"mtcnn/pnet\.pt: no such file"):
        mtcnn.load_mtcnn(tmp_path)
    write_weights(tmp_path, random_states())
    (tmp_path / "mtcnn" / "onet.pt").write_bytes(b"not a torch file")
    with pytest.raises(mtcnn.FaceWeightsError, match=r"onet\.pt: cannot be read"):
        mtcnn.load_mtcnn(tmp_path)


def test_detect_checks_its_input_and_answers_per_frame(tmp_path):
    nets = mtcnn.load_mtcnn(write_weights(tmp_path, random_states(1)))
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 80, 3), dtype=np.uint8)
    found = mtcnn.detect(nets, frames, thresholds=(0.0, 0.0, 0.0))   # random nets: let boxes through
    assert len(found) == 3
    for boxes, scores in found:
        assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,) and scores.shape == (len(boxes),)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        assert np.all(np.diff(areas) <= 0), "largest box first"
    assert sum(len(b) for b, _ in found) > 0
    assert all(len(b) == 0 for b, _ in mtcnn.detect(nets, frames, thresholds=(1.1, 0.7, 0.7)))
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        mtcnn.detect(nets, frames[0])


def _found(*boxes_per_frame):
    return [(np.array(b, np.float32).reshape(-1, 4), np.ones(len(b), np.float32)) for b in boxes_per_frame]


def test_the_main_track_is_the_large_lasting_face_not_the_first_one():
    small, big, big_moved = [0, 60, 20, 80], [40, 0, 90, 50], [50, 5, 100, 55]
    found = _found([small], [small, big], [big_moved, small], [], [], [], [big_moved])
    members = facetrack.main_track(found)
    assert sorted(members) == [1, 2]                          # 3 key frames missed: frame 6 starts anew
    found = _found([small], [small, big], [big_moved, small], [], [], [big_moved])
    assert sorted(facetrack.main_track(found)) == [1, 2, 5]   # 2 missed: the same face
    assert members[1][0].tolist() == big and members[2][0].tolist() == big_moved
    assert facetrack.main_track(_found([], [])) == {}


def test_a_face_that_jumps_across_the_frame_is_another_track():
    left, right = [0, 0, 40, 40], [200, 0, 240, 40]
    members = facetrack.main_track(_found([left], [left], [right], [right], [right]))
    assert sorted(members) == [2, 3, 4]                       # the longer of the two tracks


def test_guesses_interpolate_between_key_frames_and_stop_at_a_lost_face():
    a, b = np.array([0, 0, 10, 10], np.float32), np.array([10, 0, 20, 10], np.float32)
    guesses = facetrack._guesses(13, 4, {0: (a, 1.0), 4: (b, 1.0)})
    assert sorted(guesses) == [1, 2, 3, 5, 6, 7]              # 8, 12: key frames without the face
    np.testing.assert_allclose(guesses[2], [5, 0, 15, 10])
    np.testing.assert_allclose(guesses[7], b)                 # next to the last key frame holding it
    missed = facetrack._guesses(13, 4, {0: (a, 1.0), 12: (b, 1.0)})
    assert sorted(missed) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]   # key frames 4, 8 missed: guessed too
    np.testing.assert_allclose(missed[6], [5, 0, 15, 10])
    assert facetrack.key_frames(10, 4) == [0, 4, 8, 9]


def _followed(boxes, landmarks=None) -> facetrack.Followed:
    boxes = np.array(boxes, np.float32)
    found = ~np.isnan(boxes[:, 0])
    marks = np.full((len(boxes), 5, 2), np.nan, np.float32) if landmarks is None else np.asarray(landmarks, np.float32)
    return facetrack.Followed(boxes, found.astype(np.float32), found, marks, 0)


def test_crops_are_squares_around_the_box_with_margin_and_zeros_without_a_face():
    frame = np.zeros((100, 120, 3), np.uint8)
    frame[40:60, 50:70] = 255                                  # a white 20x20 "face"
    frames = np.stack([frame, frame])
    crops = facetrack.crop(frames, _followed([[50, 40, 70, 60], [np.nan] * 4]), size=26, margin=0.15)
    assert crops.shape == (2, 26, 26, 3) and crops.dtype == np.uint8
    white = crops[0, :, :, 0] > 127
    assert white[3:23, 3:23].all() and not white[:2].any() and not white[:, :2].any()   # 3 px margin of 26
    assert not crops[1].any()
    edge = facetrack.crop(frame[None], _followed([[100, 80, 120, 100]]), size=16, margin=0.15)
    assert edge.shape == (1, 16, 16, 3)                         # past the frame's corner: edge pixels repeated


def test_crops_turn_the_eyes_level():
    frame = np.zeros((100, 100, 3), np.uint8)
    marks = np.array([[[30, 30], [70, 70], [50, 50], [40, 60], [60, 60]]], np.float32)   # eye line at 45 degrees
    assert facetrack.eye_angle(marks[0]) == pytest.approx(45)
    frame[48:52, 10:90] = 255                                   # a bar along the eye line, turned 45 degrees
    turned = cv2.warpAffine(frame, cv2.getRotationMatrix2D((50, 50), -45, 1), (100, 100))
    crop = facetrack.crop(turned[None], _followed([[20, 20, 80, 80]], marks), size=60, margin=0.0)[0]
    rows = np.flatnonzero(crop[:, :, 0].max(1) > 127)
    assert rows.max() - rows.min() <= 8                          # the bar is level again
    assert facetrack.eye_angle(np.full((5, 2), np.nan)) == 0.0


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
    with pytest.raises(mtcnn.FaceWeightsError, match="rnet.pt from .* is not the pinned"):
        mtcnn.fetch_mtcnn(tmp_path / "w", pip_args=local, sha256=wrong, log=lambda m: None)
    assert not (tmp_path / "w").exists()
    folder = mtcnn.fetch_mtcnn(tmp_path / "w", pip_args=local, sha256=hashes, log=lambda m: None)
    assert sorted(p.name for p in folder.iterdir()) == ["onet.pt", "pnet.pt", "rnet.pt"]
    assert all((folder / n).read_bytes() == d for n, d in files.items())
    mtcnn.load_mtcnn(tmp_path / "w")
    logged = []
    mtcnn.fetch_mtcnn(tmp_path / "w", pip_args=("--no-index",), sha256=hashes, log=logged.append)
    assert logged == [f"{folder}: MTCNN weights present and valid, skipped"]   # no pip call needed


def test_fetch_refuses_files_that_do_not_load(tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    states = random_states(3)
    states["onet.pt"].pop("dense6_3.bias")
    files = {name: _saved(state) for name, state in states.items()}
    _fake_wheel(index, files)
    with pytest.raises(mtcnn.FaceWeightsError, match="missing"):
        mtcnn.fetch_mtcnn(tmp_path / "w", pip_args=("--no-index", "--find-links", str(index)),
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


def test_real_weights_find_the_astronaut_as_facenet_pytorch_does(face_weights):
    boxes, scores = mtcnn.detect(mtcnn.load_mtcnn(face_weights), skimage.data.astronaut()[None])[0]
    assert np.abs(boxes - REFERENCE_ASTRONAUT).max() < 0.05 and scores[0] > 0.99


def test_refine_corrects_a_shifted_guess_and_finds_the_eyes(face_weights):
    nets = mtcnn.load_mtcnn(face_weights)
    photo = skimage.data.astronaut()
    shifted = REFERENCE_ASTRONAUT + np.array([12, -10, 12, -10])
    boxes, probs, marks = mtcnn.refine(nets, [photo], shifted)
    assert probs[0] > 0.9
    assert np.abs(boxes[0] - REFERENCE_ASTRONAUT[0]).max() < np.abs(shifted[0] - REFERENCE_ASTRONAUT[0]).max()
    (lx, ly), (rx, ry) = marks[0, :2]
    x0, y0, x1, y1 = REFERENCE_ASTRONAUT[0]
    assert x0 < lx < rx < x1 and y0 < ly < (y0 + y1) / 2 and y0 < ry < (y0 + y1) / 2
    _, low, _ = mtcnn.refine(nets, [photo], np.array([[400, 400, 500, 500]]))   # her sleeve, no face
    assert low[0] < 0.5


def test_real_weights_track_the_face_through_a_moving_clip(face_weights):
    from features import expression

    clip = turning_clip()
    followed = facetrack.follow(mtcnn.load_mtcnn(face_weights), clip, every=8)
    assert followed.found.all() and followed.searched < len(clip)
    widths = followed.boxes[:, 2] - followed.boxes[:, 0]
    assert widths[0] < 50 < 100 < widths[-1]
    crops = facetrack.crop(clip, followed, 96, 0.2)
    with torch.inference_mode():
        probs = expression.load_model(face_weights / expression.WEIGHT_FILE)(expression.preprocess(crops))
    happy = (probs.argmax(1) == expression.EMOTIONS.index("happy")).float().mean()
    assert happy >= 0.9
