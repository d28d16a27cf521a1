"""The main face of a clip, frame by frame: a full search on some frames, O-Net tracking between.

Searching every frame with MTCNN's whole pyramid is what makes face detection slow (the figures,
measured by `benchmarks.faces`, are in docs/faces.md). A talking-head clip changes little
between two picked frames, so `follow`:

1. runs the full detector (`extract.mtcnn.detect`) on key frames, every `every`-th picked
   frame and the last one;
2. links the key frames' faces into tracks (a face continues a track when its centre is within
   one face width of the track's last box, its size within a factor 2, and the track was seen
   at most `MAX_GAP` key frames before) and keeps the main
   track: the largest sum of score x face side over its key frames, so a big, confident face
   seen throughout wins over a passer-by, a small face in the background or whichever face
   happened to come first;
3. on every other frame near the main track (between two of its key frames, or next to one,
   key frames where the detector missed it included) guesses the box (interpolated between
   key frames) and lets O-Net alone (`extract.mtcnn.refine`) confirm and correct it (a second
   time where the first correction was large); a frame where O-Net does not confirm the face
   gets the full search after all, and keeps the face found nearest the guess, if any.

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
RETRY = 0.1       # O-Net looks again when its box moved the guess by more than this part of its side
MAX_GAP = 2       # key frames in a row where a track's face may be missed (a turn, a blink of the detector)


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
            open_ = [i for i, t in enumerate(tracks) if i not in taken and k - max(t["members"]) <= MAX_GAP + 1
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


def _guesses(n: int, every: int, members: dict[int, tuple[np.ndarray, float]]) -> dict[int, np.ndarray]:
    """A guessed box for each frame near the main track and not one of its key frames:
    interpolated between the track's key frames around it (at most `MAX_GAP` key frames
    missing between them), else the nearer one's box when it is less than `every` frames away."""
    out: dict[int, np.ndarray] = {}
    pos = sorted(members)
    for t in range(n):
        if t in members:
            continue
        before = [p for p in pos if p < t]
        after = [q for q in pos if q > t]
        p, q = (before[-1] if before else None), (after[0] if after else None)
        if p is not None and q is not None and q - p <= (MAX_GAP + 1) * every:
            w = (t - p) / (q - p)
            out[t] = (1 - w) * members[p][0] + w * members[q][0]
        elif p is not None and t - p < every:
            out[t] = members[p][0]
        elif q is not None and q - t < every:
            out[t] = members[q][0]
    return out


def _nearest(boxes: np.ndarray, scores: np.ndarray, guess: np.ndarray):
    fits = [i for i, b in enumerate(boxes) if _continues(guess, b)]
    if not fits:
        return None
    i = min(fits, key=lambda i: float(np.linalg.norm(_centre(boxes[i]) - _centre(guess))))
    return boxes[i], float(scores[i])


def _search(nets, frames: np.ndarray, min_face: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """`mtcnn.detect`, keeping only faces at least `min_face` pixels wide or high: the pyramid
    starts at that size, but P-Net also answers to somewhat smaller faces, which would make the
    floor depend on where a face falls between pyramid levels."""
    out = []
    for boxes, scores in mtcnn.detect(nets, frames, min_face=min_face):
        keep = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_face
        out.append((boxes[keep], scores[keep]))
    return out


def _sides(boxes: np.ndarray) -> np.ndarray:
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def _track(nets, frames, todo: list[int], guess: np.ndarray):
    """O-Net on the guessed boxes; a second pass where the first moved the box by more than
    `RETRY` of its side (the guess was far off, the second look is centred on the face)."""
    boxes, prob, marks = mtcnn.refine(nets, [frames[t] for t in todo], guess)
    shift = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - (guess[:, :2] + guess[:, 2:]) / 2, axis=1)
    again = np.flatnonzero(shift > RETRY * np.maximum(_sides(guess), 1))
    if len(again):
        boxes[again], prob[again], marks[again] = mtcnn.refine(nets, [frames[todo[i]] for i in again], boxes[again])
    return boxes, prob, marks


def follow(nets, frames, every: int = 8, min_face: float = mtcnn.MIN_FACE,
           threshold: float = mtcnn.THRESHOLDS[2], batch: int = 16) -> Followed:
    """The main face in each of T same-sized uint8 RGB frames (an array [T, H, W, 3] or a list
    of [H, W, 3]; see the module); faces smaller than `min_face` pixels count as no face."""
    n = len(frames)
    boxes = np.full((n, 4), np.nan, np.float32)
    scores = np.zeros(n, np.float32)
    marks = np.full((n, 5, 2), np.nan, np.float32)

    def search(ts: list[int]) -> list:
        out: list = []
        for a in range(0, len(ts), batch):
            out += _search(nets, np.stack([frames[t] for t in ts[a:a + batch]]), min_face)
        return out

    keys = key_frames(n, every)
    members = {keys[k]: m for k, m in main_track(search(keys)).items()}
    searched = len(keys)
    detected = sorted(members)                    # boxes from the full search: landmarks still to get
    for t, (box, score) in members.items():
        boxes[t], scores[t] = box, score
    guesses = _guesses(n, every, members)
    todo = sorted(guesses)
    if todo:
        refined, prob, points = _track(nets, frames, todo, np.stack([guesses[t] for t in todo]))
        ok = (prob >= threshold) & (_sides(refined) >= min_face)
        kept = np.array(todo)[ok]
        boxes[kept], scores[kept], marks[kept] = refined[ok], prob[ok], points[ok]
        lost = [t for t, good in zip(todo, ok) if not good]
        for t, (bs, ss) in zip(lost, search(lost)):
            hit = _nearest(bs, ss, guesses[t])
            if hit is not None:
                boxes[t], scores[t] = hit
                detected.append(t)
        searched += len(lost)
    if detected:
        marks[detected] = mtcnn.refine(nets, [frames[t] for t in detected], boxes[detected])[2]
    return Followed(boxes, scores, ~np.isnan(boxes[:, 0]), marks, searched)


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
