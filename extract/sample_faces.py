"""A real face in some sample videos, so that the face stage and the `face` modality have work.

Drawn shapes are not faces to a detector, so a share of the sample's videos (`FACE_SHARE`, drawn
per video from a stream of its own, so every other parameter of the sample stays as it was) carry
a real photograph: the astronaut Eileen Collins from scikit-image's bundled test images
(`skimage.data.astronaut()`, a NASA photo in the public domain), cut out as an ellipse around her
smiling face and pasted into the scene behind the moving shapes, slowly moving and zooming (face 90 to 150 px wide in the
360x640 frame). The face does not depend on the video's class: it is a real input for the
pipeline, not a cue (one photograph shows one expression).

    face = face_plan((seed, cls, index))     # None, or its trajectory (x0, y0, dx, dy, width0, width1)
    paste_face(canvas, face, t, frames)      # in place, on an RGB frame
"""
from __future__ import annotations

import functools

import numpy as np

FACE_SHARE = 0.4
FACE_BOX = (181.0, 62.0, 267.0, 172.0)   # MTCNN's box of the face in the 512x512 photo (x0, y0, x1, y1)
HEAD = (224.0, 110.0, 72.0, 92.0)        # the cut-out ellipse: centre x, y and half-axes, photo pixels


def face_plan(seed: tuple, width: int = 360, height: int = 640) -> tuple[float, ...] | None:
    """The face's trajectory for the video seeded `seed`, or None for a video without a face: the
    centre at the start (x0, y0), its shift over the video (dx, dy), the face's width at the start
    and at the end, in pixels."""
    rng = np.random.default_rng([*map(int, seed), 3])
    if rng.random() >= FACE_SHARE:
        return None
    start, end = rng.uniform(90, 120), rng.uniform(120, 150)
    return (float(rng.uniform(0.35, 0.65) * width), float(rng.uniform(0.3, 0.6) * height),
            float(rng.uniform(-40, 40)), float(rng.uniform(-40, 40)), float(start), float(end))


@functools.lru_cache(maxsize=1)
def _photo() -> tuple[np.ndarray, np.ndarray]:
    """The photo as float32 and its soft-edged elliptical head mask [512, 512, 1]."""
    import skimage.data

    photo = skimage.data.astronaut().astype(np.float32)
    cx, cy, ax, ay = HEAD
    yy, xx = np.mgrid[0:photo.shape[0], 0:photo.shape[1]].astype(np.float32)
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    mask = np.clip((1.05 - r) / 0.1, 0.0, 1.0)[..., None]
    return photo, mask


def paste_face(canvas: np.ndarray, face: tuple[float, ...], t: int, frames: int,
               offset: tuple[float, float] = (0.0, 0.0)) -> None:
    """Paste the face at frame t of `frames` onto the uint8 RGB `canvas`, in place, its trajectory
    shifted by `offset` (x, y): the frame's place in a larger canvas."""
    import cv2

    photo, mask = _photo()
    phase = t / max(1, frames - 1)
    x0, y0, dx, dy, width0, width1 = face
    scale = (width0 + (width1 - width0) * phase) / (FACE_BOX[2] - FACE_BOX[0])
    cx, cy = x0 + dx * phase + offset[0], y0 + dy * phase + offset[1]
    # only the rectangle around the ellipse is warped and blended
    left, top = max(0, int(cx - 1.1 * scale * HEAD[2])), max(0, int(cy - 1.1 * scale * HEAD[3]))
    right = min(canvas.shape[1], int(cx + 1.1 * scale * HEAD[2]) + 1)
    bottom = min(canvas.shape[0], int(cy + 1.1 * scale * HEAD[3]) + 1)
    if right <= left or bottom <= top:
        return
    affine = np.array([[scale, 0, cx - left - scale * HEAD[0]], [0, scale, cy - top - scale * HEAD[1]]],
                      dtype=np.float64)
    size = (right - left, bottom - top)
    head = cv2.warpAffine(photo, affine, size, flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(mask, affine, size, flags=cv2.INTER_LINEAR)[..., None]
    region = canvas[top:bottom, left:right]
    blended = region.astype(np.float32) * (1 - alpha) + head * alpha
    np.copyto(region, np.clip(blended + 0.5, 0, 255).astype(np.uint8))
