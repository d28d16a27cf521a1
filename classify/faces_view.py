"""The report's face column: each test video's face crops and its expression strip over time.

Beside a video's frame thumbnails the report shows, when the work folder has the faces stage's
output for it, up to 4 of its face crops (small JPEGs, frames with a face spread over the clip)
and one strip cell per frame of the track: for a frame with a face, a bar as tall as the top
class's probability in that class's colour (the title says the frame, the class and all seven
probabilities), for a frame without one a hatched "no face" cell. The probabilities are the
`face` feature cache's first 7 columns (`features.zoo.face`); without that cache the strip shows
only which frames have a face. A cache made with random weights is said so under the strip.

Only fixed class names and numbers reach the page from here; the template escapes everything.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from classify.thumbs import write_thumbs
from extract.layout import file_key
from features import cache
from features.expression import EMOTIONS

CROPS = 4
CROP_SIZE = 48
FACE_MODALITY = "face"
# one colour per FER2013 class, in EMOTIONS order; the legend shows them
COLOURS = ("#c0392b", "#7d6608", "#6c3483", "#f1c40f", "#2e86c1", "#e67e22", "#95a5a6")


def legend() -> list[dict]:
    return [{"name": c, "colour": k} for c, k in zip(EMOTIONS, COLOURS)]


def probabilities(work, ids) -> tuple[dict[str, np.ndarray], str | None]:
    """({id: [F, 7] per frame with a face}, a note about the cache or None) for the listed videos."""
    if not cache.exists(work, FACE_MODALITY):
        return {}, "no face features (run the face modality for expressions)"
    rows = cache.load_some(work, FACE_MODALITY, ids, slice(0, len(EMOTIONS)))
    weights = str(cache.attributes(work, FACE_MODALITY).get("weights", "")).lower()
    return rows, ("expressions from RANDOM weights: meaningless" if weights == "random" else None)


def _crops(track, found: np.ndarray, video_id: str, out: Path) -> list[str]:
    with_face = np.flatnonzero(found)
    picks = dict.fromkeys(with_face[np.linspace(0, len(with_face) - 1, min(CROPS, len(with_face))).round()
                                    .astype(int)].tolist()) if len(with_face) else {}
    return write_thumbs((track.crops[t] for t in picks), out, f"faces/{file_key(video_id)}", CROP_SIZE, 85)


def _strip(found: np.ndarray, probs: np.ndarray | None) -> list[dict]:
    cells = []
    rows = iter(probs) if probs is not None and len(probs) == int(found.sum()) else None
    for t, has in enumerate(found.tolist()):
        if not has:
            cells.append({"face": False, "title": f"frame {t + 1}: no face"})
            continue
        p = next(rows) if rows is not None else None
        if p is None:
            cells.append({"face": True, "height": 100.0, "colour": "#b8c2d1", "title": f"frame {t + 1}: face"})
            continue
        top = int(np.argmax(p))
        detail = ", ".join(f"{c} {v:.2f}" for c, v in zip(EMOTIONS, p))
        cells.append({"face": True, "height": float(100 * p[top]), "colour": COLOURS[top], "top": EMOTIONS[top],
                      "title": f"frame {t + 1}: {EMOTIONS[top]} {p[top]:.2f} ({detail})"})
    return cells


def face_column(work, video_id: str, out: Path, probs: dict[str, np.ndarray], note: str | None) -> dict | None:
    """What the report shows of one video's face, or None when the faces stage has no output for it."""
    from extract import faces

    try:
        track = faces.load(work, video_id)
    except Exception:  # not extracted or failed: the column says so
        return None
    found = np.asarray(track.found, dtype=bool)
    if not found.any():
        return {"crops": [], "strip": _strip(found, None), "with_face": 0, "frames": len(found), "note": None}
    return {"crops": _crops(track, found, video_id, out), "strip": _strip(found, probs.get(video_id)),
            "with_face": int(found.sum()), "frames": len(found), "note": note}
