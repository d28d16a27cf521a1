"""The main face of a clip, frame by frame: a full search on some frames, O-Net tracking between.

Searching every frame with MTCNN's whole pyramid is what makes face detection slow (about 4 s
per 79-frame portrait clip on one core). A talking-head clip changes little between two picked
frames, so `follow`:

1. runs the full detector (`extract.mtcnn.detect`) on key frames, every `every`-th picked
   frame and the last one;
2. links the key frames' faces into tracks (a face continues a track when its centre is within
   one face width of the track's last box and its size within a factor 2) and keeps the main
   track: the largest sum of score x face side over its key frames, so a big, confident face
   seen throughout wins over a passer-by, a small face in the background or whichever face
   happened to come first;
3. on every frame near the main track (between two of its key frames, or next to one) guesses
   the box (interpolated between key frames) and lets O-Net alone (`extract.mtcnn.refine`)
   confirm and correct it, twice; a frame where O-Net does not confirm the face gets the full
   search after all, and keeps the face found nearest the guess, if any.

A face that appears only between two key frames, never on one, is not found (at the default
`every`, a face on screen for less than about 8 picked frames, 1.5 s of a 15-s clip); a cut
from a face to no face is found because O-Net stops confirming the guessed box.

`crop` cuts the aligned square crops: rotated so that the eyes (O-Net's landmarks) are level,
the box's side widened by `margin` on each side, pixels outside the frame repeated from its edge.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

from extract import mtcnn

MAX_TILT = 45.0   # degrees; a larger eye-line angle is taken for a landmark error, not a head tilt


class Followed(NamedTuple):
    """The main face per frame, in the frames' pixels; NaN boxes and score 0 where not found."""
    boxes: np.ndarray       # [T, 4] float32
    scores: np.ndarray      # [T] float32
    found: np.ndarray       # [T] bool
    landmarks: np.ndarray   # [T, 5, 2] float32 (NaN where not found)
    searched: int           # frames that got the full search


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _side(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


def _continues(last: np.ndarray, box: np.ndarray) -> bool:
    ratio = _side(box) / max(_side(last), 1e-6)
    return 0.5 <= ratio <= 2.0 and float(np.linalg.norm(_centre(box) - _centre(last))) <= max(_side(last), _side(box))


def main_track(found: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, tuple[np.ndarray, float]]:
    """The main face over a sequence of detections: {position: (box, score)} of its members.

    Faces are linked greedily, the largest first, to the track they continue (`_continues`);
    the main track has the largest sum of score x side. Ties go to the track that starts first."""
    tracks: list[dict] = []      # {"members": {k: (box, score)}, "last": box, "value": float}
    for k, (boxes, scores) in enumerate(found):
        taken: set[int] = set()
        for box, score in sorted(zip(boxes, scores), key=lambda bs: -_side(bs[0])):
            open_ = [i for i, t in enumerate(tracks) if i not in taken and k - 1 in t["members"]
                     and _continues(t["last"], box)]
            if open_:
                i = min(open_, key=lambda i: float(np.linalg.norm(_centre(box) - _centre(tracks[i]["last"]))))
            else:
                tracks.append({"members": {}, "last": box, "value": 0.0})
                i = len(tracks) - 1
            taken.add(i)
            t = tracks[i]
            t["members"][k] = (np.asarray(box, np.float32), float(score))
            t["last"] = box
            t["value"] += float(score) * _side(box)
    if not tracks:
        return {}
    return max(tracks, key=lambda t: t["value"])["members"]   # max keeps the first of equals


def key_frames(n: int, every: int) -> list[int]:
    """Every `every`-th frame from the first, and the last."""
    return sorted(set(range(0, n, max(1, every))) | {n - 1})


def _guesses(n: int, keys: list[int], members: dict[int, tuple[np.ndarray, float]]) -> dict[int, np.ndarray]:
    """A guessed box for each frame next to the main track: interpolated between two consecutive
    key frames that both hold it, the one key frame's box where only one does."""
    out: dict[int, np.ndarray] = {}
    for a, b in zip(keys[:-1], keys[1:]):
        ina, inb = a in members, b in members
        for t in range(a + 1, b):
            if ina and inb:
                w = (t - a) / (b - a)
                out[t] = (1 - w) * members[a][0] + w * members[b][0]
            elif ina or inb:
                out[t] = members[a if ina else b][0]
    return out


def _nearest(boxes: np.ndarray, scores: np.ndarray, guess: np.ndarray):
    fits = [i for i, b in enumerate(boxes) if _continues(guess, b)]
    if not fits:
        return None
    i = min(fits, key=lambda i: float(np.linalg.norm(_centre(boxes[i]) - _centre(guess))))
    return boxes[i], float(scores[i])


def follow(nets, frames: np.ndarray, every: int = 8, min_face: float = mtcnn.MIN_FACE,
           threshold: float = mtcnn.THRESHOLDS[2], batch: int = 16) -> Followed:
    """The main face in each of T same-sized uint8 RGB frames [T, H, W, 3] (see the module)."""
    n = len(frames)
    boxes = np.full((n, 4), np.nan, np.float32)
    scores = np.zeros(n, np.float32)
    marks = np.full((n, 5, 2), np.nan, np.float32)
    keys = key_frames(n, every)
    found_keys: list = []
    for a in range(0, len(keys), batch):
        found_keys += mtcnn.detect(nets, frames[keys[a:a + batch]], min_face=min_face)
    members = {keys[k]: m for k, m in main_track(found_keys).items()}
    searched = len(keys)
    for t, (box, score) in members.items():
        boxes[t], scores[t] = box, score
    guesses = _guesses(n, keys, members)
    todo = sorted(guesses)
    if todo:
        guess = np.stack([guesses[t] for t in todo])
        refined = guess
        for _ in range(2):
            refined, prob, _ = mtcnn.refine(nets, frames[todo], refined)
        ok = prob >= threshold
        boxes[np.array(todo)[ok]], scores[np.array(todo)[ok]] = refined[ok], prob[ok]
        lost = [t for t, good in zip(todo, ok) if not good]
        for a in range(0, len(lost), batch):
            part = lost[a:a + batch]
            for t, (bs, ss) in zip(part, mtcnn.detect(nets, frames[part], min_face=min_face)):
                hit = _nearest(bs, ss, guesses[t])
                if hit is not None:
                    boxes[t], scores[t] = hit
        searched += len(lost)
    found = ~np.isnan(boxes[:, 0])
    where = np.flatnonzero(found)
    if len(where):
        _, prob, points = mtcnn.refine(nets, frames[where], boxes[where])
        marks[where] = points
    return Followed(boxes, scores, found, marks, searched)


def eye_angle(landmarks: np.ndarray) -> float:
    """Degrees to turn a face so its eyes are level (0 when the landmarks are missing or implausible)."""
    if not np.isfinite(landmarks[:2]).all():
        return 0.0
    (lx, ly), (rx, ry) = landmarks[0], landmarks[1]
    angle = math.degrees(math.atan2(ry - ly, rx - lx))
    return angle if abs(angle) <= MAX_TILT and rx > lx else 0.0


def crop(frames: np.ndarray, followed: Followed, size: int, margin: float) -> np.ndarray:
    """uint8 [T, size, size, 3]: each found face turned upright and cut square with `margin` of
    its side on each side; zeros where no face was found."""
    out = np.zeros((len(frames), size, size, 3), np.uint8)
    for t in np.flatnonzero(followed.found):
        box = followed.boxes[t]
        cx, cy = _centre(box)
        scale = size / max(_side(box) * (1 + 2 * margin), 1.0)
        affine = cv2.getRotationMatrix2D((float(cx), float(cy)), eye_angle(followed.landmarks[t]), scale)
        affine[:, 2] += [size / 2 - cx, size / 2 - cy]
        out[t] = cv2.warpAffine(frames[t], affine, (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out
