"""Run folders: atomic, durable publication and small JSON helpers shared by train, fuse and table."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
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


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a fresh temporary folder beside `final`; on success it replaces `final` whole.

    A process killed inside the block leaves `final` as it was (plus a `.tmp-*` folder that the
    next publication beside it removes); a reader never sees a half-written folder. Before the
    rename every file in the folder is fsync'ed, and the parent folder after it, so a power loss
    leaves the old run or the complete new one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    durable.remove_dead_temps(final.parent)
    tmp = durable.temp_path(final)
    tmp.mkdir()
    try:
        yield tmp
        durable.fsync_tree(tmp)
        old = None
        if final.exists():
            old = durable.temp_path(final.with_name(f"old-{final.name}"))
            os.replace(final, old)
        durable.publish(tmp, final, sync_dir=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
