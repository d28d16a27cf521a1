"""The report's small pictures: RGB images as JPEG files beside its page."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np


def write_thumbs(images: Iterable[np.ndarray], out: Path, prefix: str, size: int, quality: int) -> list[str]:
    """Each RGB image resized to size x size, written as `out/<prefix>-<k>.jpg`; their paths
    relative to `out` (what the page links), in order."""
    import cv2

    (out / prefix).parent.mkdir(parents=True, exist_ok=True)
    names = []
    for k, image in enumerate(images):
        small = cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            name = f"{prefix}-{k}.jpg"
            (out / name).write_bytes(buf.tobytes())
            names.append(name)
    return names
