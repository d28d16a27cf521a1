"""What a stage output was made from, and whether it is still current.

Beside each output `<key>.npz` a record `<key>.source.json` holds the source video's resolved
path, size and mtime_ns (plus the clip's start and end) and the output's own size and
mtime_ns. A re-run redoes, and says so, every video whose source changed; checking costs two
`stat` calls and one small read per video. Flow and audio decode the source video themselves
(frames are only their failure list), so they check the source, not the frames output.
"""
from __future__ import annotations

import functools
import json
import os
import stat as stat_module
from pathlib import Path

from extract import durable
from extract.manifest import Video

SOURCE_SUFFIX = ".source.json"


def provenance(path: str | os.PathLike) -> dict:
    """`{"path": resolved path, "size": bytes, "mtime_ns": ...}` of a file: what identifies the
    version of a file that an output was made from, at the cost of one `stat` (plus resolving
    its folder once per folder).

    Raises FileNotFoundError (or another OSError) when the file cannot be stat'ed. Two records
    are equal when the file is the same and unchanged (a rewrite in place changes mtime_ns; a
    different file at the same path changes size or mtime_ns, in practice)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    resolved = os.path.join(_real_folder(folder), name)
    st = os.lstat(resolved)
    if stat_module.S_ISLNK(st.st_mode):
        resolved = os.path.realpath(resolved)
        st = os.stat(resolved)
    return {"path": resolved, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def source_provenance(video: Video) -> dict | None:
    """The source's `provenance` plus the clip bounds of the manifest row; None if it cannot be stat'ed."""
    try:
        record = provenance(video.path)
    except OSError:
        return None
    record.update(start=video.start, end=video.end)
    return record


def source_record_path(out: str | os.PathLike) -> Path:
    """The provenance record beside an output: `<key>.source.json` for `<key>.npz`."""
    return Path(_record_name(os.fspath(out)))


def _record_name(out: str) -> str:
    folder, name = os.path.split(out)
    return os.path.join(folder, name.split(".", 1)[0] + SOURCE_SUFFIX)


def read_source_record(out: str | os.PathLike) -> dict | None:
    """The record written beside an output (`{"source": ..., "output": ...}`), or None."""
    try:
        with open(_record_name(os.fspath(out)), "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def write_source_record(out: str | os.PathLike, source: dict) -> None:
    """Record `source` beside the just-published output `out`, with the output's size and mtime_ns.

    No fsync: a record lost or emptied by a power loss reads as "no source record" and the
    video is redone; the output itself was fsync'ed before its rename."""
    st = os.stat(out)
    record = {"source": source, "output": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}}
    durable.atomic_write_bytes(source_record_path(out), json.dumps(record, sort_keys=True).encode("utf-8"), sync=False)


def remove_output(out: str | os.PathLike) -> None:
    """Delete an output and its record (a stale output must not outlive a redo that fails)."""
    Path(out).unlink(missing_ok=True)
    source_record_path(out).unlink(missing_ok=True)


def stale_reason(out: str | os.PathLike, video: Video, source: dict | None = None) -> str | None:
    """None when the output `out` exists and is current for `video`; otherwise why not:
    "missing", "no source record" (made before records were kept, or killed before its record
    was written), "output changed" (the file is not the one the record describes), "source
    changed" (another file, or the same file modified, or other clip bounds).

    Costs a `stat` of the output and of the source and one small read: about 1 s for 31,761
    videos from the page cache on the 2-core build machine (`python -m benchmarks.reliability`).
    The feature stage uses it to check that the stage output it reads is current."""
    out = os.fspath(out)
    try:
        st = os.stat(out)
    except FileNotFoundError:
        return "missing"
    record = read_source_record(out)
    if not isinstance(record, dict) or "source" not in record:
        return "no source record"
    if record.get("output") != {"size": st.st_size, "mtime_ns": st.st_mtime_ns}:
        return "output changed"
    if record["source"] != (source if source is not None else source_provenance(video)):
        return "source changed"
    return None
