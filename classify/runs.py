"""Run folders: atomic publication and small JSON helpers shared by train, fuse and table."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

from features.cache import pid_alive

DEFAULT_WORK = "work/sample"
DEFAULT_MANIFEST = "data/sample/manifest.csv"


def write_json(path: str | os.PathLike, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a fresh temporary folder beside `final`; on success it replaces `final` whole.

    A process killed inside the block leaves `final` as it was (plus a `.tmp-*` folder that the
    next publication beside it removes); a reader never sees a half-written folder.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final.parent)
    tmp = final.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-{final.name}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.with_name(f".tmp-{os.getpid()}-{secrets.token_hex(4)}-old-{final.name}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale(folder: Path) -> None:
    """Temporary folders of processes that no longer run."""
    for entry in folder.iterdir():
        if not entry.name.startswith(".tmp-"):
            continue
        pid = entry.name[5:].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
