"""Run folders: atomic, durable publication and small JSON helpers shared by train, fuse and table."""
from __future__ import annotations

import json
import os
from pathlib import Path

from extract import durable

DEFAULT_WORK = "work/sample"
DEFAULT_MANIFEST = "data/sample/manifest.csv"


def write_json(path: str | os.PathLike, obj) -> None:
    """Write JSON atomically and durably (fsync before the rename; see `extract.durable`).

    Inside an `atomic_dir` block the folder is synced as a whole when it is published."""
    data = (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    durable.atomic_write_bytes(path, data)


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))
