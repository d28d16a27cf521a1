"""The feature cache: per-video shards while extracting, one HDF5 file per modality after.

Layout under a work folder W (paths from `extract.layout.Work`; nothing is ever written outside
`W/features/`):

    W/features/<modality>.shards/attrs.json          settings the shards were made with, and "format"
    W/features/<modality>.shards/<key>.npy           one video's sequence, float32 [L, D]
    W/features/<modality>.shards/<key>.source.json   the input that sequence was made from (provenance)
    W/features/<modality>.shards/<key>.missing.json  {"id": ..., "reason": ...}: no such modality
    W/features/<modality>.h5                         the consolidated cache that `load` reads

`<key>` is `extract.layout.file_key(id)`, the name the stage outputs of that video have too, so
ids with spaces, slashes, `../` or non-ASCII characters all map to plain file names inside the
shard folder, and two ids never share a name.

Formats. Shards are of `FORMAT` 2 (recorded in attrs.json). A shard folder of format 1 (an older
version's, whose file names came from another id-to-name function) is never read: the writer
says so in one log line, removes the folder (this tool made it; the shards are redone) and
starts a fresh one. A consolidated .h5 of format 1 is still read as it is (its ids are stored
inside it; the layout is the same), and is rewritten as format 2 the next time its modality is
consolidated.

Crash safety. Every shard, marker, attrs.json and .h5 file is written under a temporary name
(`.tmp-<pid>-...`) in the same folder, flushed and fsync'ed, and renamed into place
(`extract.durable`), so a process killed at any point (SIGKILL included) leaves either the old
state or the new one, never a truncated file; after attrs.json and the .h5 file the folder is
fsync'ed too, so a power loss cannot leave an empty or vanished cache file under its name.
Temporary files of dead processes are removed by the next `ShardWriter` or `consolidate`.

The consolidated file:

    data             float32 [sum(lengths), D]  the present videos' sequences one after another
    offsets          int64   [n + 1]            video i is data[offsets[i]:offsets[i + 1]]
    ids              utf-8   [n]                in the order given to `consolidate`
    missing_ids      utf-8   [m]                videos without this modality ...
    missing_reasons  utf-8   [m]                ... and why (never zero-filled into `data`)
    attributes: attrs_json (the settings dict, exactly), one attribute per settings key
                (JSON-encoded unless a plain scalar), format, source_digest, dim

`data` is contiguous and uncompressed, so `load` reads it at memory-copy speed straight into
the padded array. Values are stored as float32, exactly as the backbone produced them.

Memory: `load` returns a zero-padded float32 array `[n, max L, D]`; for DMVER (31,761 videos)
that is 1.3 GB for rgb or flow `[10, 1024]`, 0.3 GB for audio `[~15, 128]` and 5.1 GB for
rgb2d `[79, 512]`. Peak memory is that array plus one read block (`BLOCK_BYTES`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from extract import claims, durable
from extract.layout import as_work, file_key

log = logging.getLogger(__name__)

FORMAT = 2                # of the shards (attrs.json) and of the .h5 files written now
READABLE_FORMATS = (1, 2)  # of the .h5 files `load` reads
BLOCK_BYTES = 64 << 20
# Settings keys that describe the run rather than the features: a difference in them does not
# make cached shards stale (a new package version or another device can resume an extraction).
INFORMATIONAL_ATTRS = frozenset({"package_version", "version", "created", "device", "jobs", "host"})

_MODALITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_TMP_PREFIX = durable.TMP_PREFIX


class CacheError(Exception):
    """Base class of the cache's errors; messages say what to do."""


class CacheSettingsError(CacheError):
    """Shards exist that were made with other settings than the ones asked for now."""


class CacheMissingError(CacheError, FileNotFoundError):
    """No consolidated cache for this modality."""


class CacheIncompleteError(CacheError):
    """`consolidate` was asked for videos that have neither a shard nor a missing-marker."""


class Features(NamedTuple):
    ids: list[str]
    x: np.ndarray        # float32 [n, L, D], zero-padded after each video's length
    lengths: np.ndarray  # int64 [n]


# ----------------------------------------------------------------------------- names and paths


def _check_modality(modality: str) -> str:
    if not isinstance(modality, str) or not _MODALITY.match(modality):
        raise ValueError(f"modality name {modality!r}: use letters, digits, '_' or '-' (it becomes a file name)")
    return modality


def cache_path(work: str | os.PathLike, modality: str) -> Path:
    """`W/features/<modality>.h5` (`Work.cache`), for a valid modality name."""
    return as_work(work).cache(_check_modality(modality))


def shard_dir(work: str | os.PathLike, modality: str) -> Path:
    """`W/features/<modality>.shards/` (`Work.shards`), for a valid modality name."""
    return as_work(work).shards(_check_modality(modality))


def shard_files(folder: str | os.PathLike) -> list[Path]:
    """The published shards of a shard folder (temporaries, whose names start with '.', excluded)."""
    if not os.path.isdir(folder):
        return []
    return [Path(e.path) for e in os.scandir(folder) if e.name.endswith(".npy") and not e.name.startswith(".")]


def exists(work: str | os.PathLike, modality: str) -> bool:
    return cache_path(work, modality).is_file()


def _normalise(attrs: dict) -> dict:
    try:
        return json.loads(json.dumps(attrs, sort_keys=True))
    except TypeError as exc:
        raise TypeError(f"cache settings must be JSON values (str, number, bool, list, dict): {exc}") from None


def _atomic_write_json(target: Path, obj, sync_dir: bool = True) -> None:
    data = (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
    durable.atomic_write_bytes(target, data, sync_dir=sync_dir)


def _with_format(attrs: dict) -> dict:
    """What attrs.json holds: the settings and the shard format."""
    return {**attrs, "format": FORMAT}


def _diff(old: dict, new: dict) -> list[str]:
    keys = sorted((set(old) | set(new)) - INFORMATIONAL_ATTRS)
    return [f"{k}: {old.get(k, '(unset)')!r} in the cache, {new.get(k, '(unset)')!r} now"
            for k in keys if old.get(k) != new.get(k)]


def _read_attrs(folder: Path) -> dict | None:
    try:
        found = json.loads((folder / "attrs.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _retire_old_format(folder: Path, modality: str, wait: float = 10.0) -> None:
    """Remove a shard folder of an older format (one log line); refuse one of a newer format.

    Its shards are named by another function than `file_key`, so reading them would miss every
    one: the videos are extracted again. The folder goes only while no run holds it (an
    exclusive `flock` of its lock file, as `extract.claims.claim_settings` takes); it is renamed
    to a temporary name first, so a run killed while deleting it leaves a dead process's
    temporary that the next run removes."""
    deadline = time.monotonic() + wait
    while True:
        found = _read_attrs(folder)
        if found is None or found.get("format", 1) == FORMAT:
            return  # nothing there, unreadable (the claim says so), or current
        fmt = found.get("format", 1)
        if not isinstance(fmt, int) or fmt > FORMAT:
            raise CacheError(f"{folder} holds {modality} shards of cache format {fmt!r}, newer than this "
                             f"version's ({FORMAT}): upgrade the toolkit, or delete {folder} to extract again")
        try:
            fd = os.open(folder / claims.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # another run of this version retired it meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CacheSettingsError(f"{folder} holds {modality} shards of cache format {fmt} and another "
                                             f"run is using it; let that run finish, then run again") from None
                time.sleep(0.1)
                continue
            if _read_attrs(folder) != found:
                continue  # changed while we waited for the lock: look again
            shards = len(shard_files(folder))
            log.warning("features %s: %s holds %d shard(s) of cache format %d (an older version's file names), "
                        "which this version does not read: removed; those videos are extracted again",
                        modality, folder, shards, fmt)
            aside = durable.publish(folder, durable.temp_path(folder))
            shutil.rmtree(aside, ignore_errors=True)
            return
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- writing


class ShardWriter:
    """Per-video shards under W/features/<modality>.shards/, consolidated into W/features/<modality>.h5.

    The writer claims the shard folder for its settings (`extract.claims.claim_settings`: an
    exclusive `flock` while it compares or records `attrs.json`, a shared one while it lives),
    so a concurrent run with other settings is refused (`CacheSettingsError`) instead of mixing
    its features into this cache, while runs with the same settings may fill it together (every
    file appears atomically). Use it as a context manager, or call `close()`, to let go.
    Each shard may carry a provenance record (`<name>.source.json`: what input it was made from),
    so that a re-run can tell a shard made from an input that has changed since.

    `claim=False` makes the writer of a worker of a run that holds the claim elsewhere (a Dask
    worker, `features.distributed`): it claims nothing, and publishes each shard or marker inside
    `extract.claims.hold_claim`, so it never lands in a folder that has been deleted or re-claimed
    with other settings since (`extract.claims.ClaimLost` then ends the worker's batch).
    """

    def __init__(self, work: str | os.PathLike, modality: str, attrs: dict, claim: bool = True):
        self.work = Path(work)
        self.modality = _check_modality(modality)
        self.dir = shard_dir(work, modality)
        self.attrs = _normalise(attrs)  # the settings; attrs.json adds the shard format
        if "format" in self.attrs:
            raise ValueError("cache settings: 'format' is the cache's own key")
        self._claim = contextlib.ExitStack()
        self.joined = not claim
        if self.joined:
            return
        _retire_old_format(self.dir, self.modality)
        self.dir.mkdir(parents=True, exist_ok=True)
        wanted = _with_format(self.attrs)
        try:
            claim = self._claim.enter_context(claims.claim_settings(
                self.dir, wanted, f"{self.modality} feature settings", settings_file="attrs.json",
                ignore=tuple(INFORMATIONAL_ATTRS)))
        except claims.SettingsMismatch:
            old = _read_attrs(self.dir) or {}
            raise CacheSettingsError(
                f"{self.dir} holds {self.modality} features made (or being made by another run) with other "
                f"settings: " + "; ".join(_diff(old, wanted))
                + f". Either run again with the cached settings, or delete {self.dir} "
                f"(and {cache_path(work, modality)}) to extract {self.modality} again with the new ones.") from None
        # informational keys may differ: the shards keep their record
        self.attrs = {k: v for k, v in claim.settings.items() if k != "format"}
        durable.remove_dead_temps(self.dir)

    def close(self) -> None:
        """Let go of the folder's claim."""
        self._claim.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _paths(self, video_id: str) -> tuple[Path, Path]:
        if not isinstance(video_id, str) or not video_id:
            raise ValueError(f"video id must be a non-empty string, got {video_id!r}")
        name = file_key(video_id)
        return self.dir / f"{name}.npy", self.dir / f"{name}.missing.json"

    def has_shard(self, video_id: str) -> bool:
        """A sequence is stored for this id (not a missing-marker)."""
        return self._paths(video_id)[0].is_file()

    def done(self, video_id: str) -> bool:
        """A shard or a missing-marker exists for this id."""
        shard, marker = self._paths(video_id)
        return shard.exists() or marker.exists()

    def write(self, video_id: str, seq: np.ndarray, source: dict | None = None) -> None:
        """Store one video's sequence `[L, D]` (float32, L >= 1, finite values); `source`, if
        given, is the record of the input it was made from (see `source_record`)."""
        seq = np.ascontiguousarray(seq, dtype=np.float32)
        if seq.ndim != 2 or seq.shape[0] == 0 or seq.shape[1] == 0:
            raise ValueError(f"{self.modality} of {video_id!r}: expected a [L, D] sequence with L, D >= 1, "
                             f"got shape {seq.shape} (record a video without this modality with missing())")
        if not np.isfinite(seq).all():
            raise ValueError(f"{self.modality} of {video_id!r}: the sequence holds NaN or infinite values")
        shard, marker = self._paths(video_id)
        record = self._record_path(shard)
        with self._publishing():
            record.unlink(missing_ok=True)  # never a record describing another shard than the one on disk
            durable.atomic_write(shard, lambda f: np.save(f, seq, allow_pickle=False))
            if source is not None:
                durable.atomic_write_bytes(record, json.dumps(source, sort_keys=True).encode("utf-8"))
            marker.unlink(missing_ok=True)

    def _publishing(self):
        """Where files are published: under the claim's check in a joined writer; a claiming
        writer holds the claim itself."""
        if not self.joined:
            return contextlib.nullcontext()
        return claims.hold_claim(self.dir, _with_format(self.attrs), settings_file="attrs.json",
                                 ignore=tuple(INFORMATIONAL_ATTRS))

    @staticmethod
    def _record_path(shard: Path) -> Path:
        return shard.with_name(shard.name[: -len(".npy")] + ".source.json")

    def source_record(self, video_id: str) -> dict | None:
        """The provenance record of this video's shard (None: no shard, or made without one)."""
        shard, _ = self._paths(video_id)
        try:
            return json.loads(self._record_path(shard).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def missing(self, video_id: str, reason: str) -> None:
        """Record that this video has no such modality (no audio track, failed upstream, ...)."""
        shard, marker = self._paths(video_id)
        with self._publishing():
            _atomic_write_json(marker, {"id": video_id, "reason": str(reason)}, sync_dir=False)
            shard.unlink(missing_ok=True)
            self._record_path(shard).unlink(missing_ok=True)

    def consolidate(self, ids: list[str]) -> Path:
        """Build W/features/<modality>.h5 from the shards of these ids, in this order.

        Every id needs a shard or a missing-marker. When the shards, markers and settings are
        the ones the existing .h5 was built from (same digest), the file is left as it is.
        """
        if self.joined:
            raise CacheError("consolidate: only the run that claims the shard folder consolidates it")
        durable.remove_dead_temps(self.dir)
        durable.remove_dead_temps(self.dir.parent)
        ids = list(ids)
        if len(set(ids)) != len(ids):
            raise ValueError("consolidate: duplicate ids")
        present, missing, absent, shapes = [], {}, [], []
        digest = hashlib.sha256(json.dumps([FORMAT, self.modality, self.attrs], sort_keys=True).encode())
        for vid in ids:
            shard, marker = self._paths(vid)
            try:
                st = os.stat(shard)
            except FileNotFoundError:
                st = None
            if st is not None:
                present.append((vid, shard))
                digest.update(f"\0S{vid}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogatepass"))
            elif marker.exists():
                missing[vid] = json.loads(marker.read_text(encoding="utf-8"))["reason"]
                digest.update(f"\0M{vid}\0{missing[vid]}".encode("utf-8", "surrogatepass"))
            else:
                absent.append(vid)
        if absent:
            raise CacheIncompleteError(
                f"{self.modality}: {len(absent)} of {len(ids)} videos have neither features nor a missing-marker "
                f"(e.g. {absent[:5]}); extract them first, or record them with missing()")
        target = cache_path(self.work, self.modality)
        source_digest = digest.hexdigest()
        if target.is_file():
            try:
                import h5py
                with h5py.File(target, "r") as f:
                    if f.attrs.get("source_digest") == source_digest:
                        return target
            except OSError:
                pass  # unreadable: rebuild
        for vid, shard in present:
            arr = np.load(shard, mmap_mode="r", allow_pickle=False)
            shapes.append(arr.shape)
            del arr
        dims = {s[1] for s in shapes}
        if len(dims) > 1:
            raise CacheError(f"{self.modality}: shards disagree on the feature size ({sorted(dims)}); "
                             f"delete {self.dir} and extract again")
        lengths = np.array([s[0] for s in shapes], dtype=np.int64)

        def blocks() -> Iterator[np.ndarray]:
            for _, shard in present:
                yield np.load(shard, allow_pickle=False)

        write_consolidated(target, [v for v, _ in present], lengths, dims.pop() if dims else 0, blocks(),
                           missing, self.attrs, source_digest)
        return target


def write_consolidated(target: Path, ids: list[str], lengths: np.ndarray, dim: int, blocks: Iterable[np.ndarray],
                       missing: dict[str, str], attrs: dict, source_digest: str | None = None) -> Path:
    """Write a consolidated cache file atomically; `blocks` yields the rows of `data` in order.

    Used by `ShardWriter.consolidate` and by the benchmarks (which build large caches without
    per-video shards); this is the only place that knows the file format.
    """
    import h5py

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    attrs = _normalise(attrs)
    tmp = durable.temp_path(target)
    string = h5py.string_dtype("utf-8")
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            data = f.create_dataset("data", shape=(total, dim), dtype=np.float32)
            row = 0
            pending: list[np.ndarray] = []
            pending_rows = 0
            budget = max(1, BLOCK_BYTES // max(1, dim * 4))
            for block in blocks:
                block = np.asarray(block, dtype=np.float32).reshape(-1, dim)
                pending.append(block)
                pending_rows += block.shape[0]
                if pending_rows >= budget:
                    data[row:row + pending_rows] = np.concatenate(pending) if len(pending) > 1 else pending[0]
                    row += pending_rows
                    pending, pending_rows = [], 0
            if pending:
                data[row:row + pending_rows] = np.concatenate(pending) if len(pending) > 1 else pending[0]
                row += pending_rows
            if row != total:
                raise CacheError(f"{target.name}: got {row} rows of features, expected {total}")
            f.create_dataset("offsets", data=offsets)
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=string)
            f.create_dataset("missing_ids", data=np.array(list(missing), dtype=object), dtype=string)
            f.create_dataset("missing_reasons", data=np.array(list(missing.values()), dtype=object), dtype=string)
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
            f.attrs["attrs_json"] = json.dumps(attrs, sort_keys=True)
            f.attrs["format"] = FORMAT
            f.attrs["dim"] = dim
            f.attrs["source_digest"] = source_digest or secrets.token_hex(16)
            f.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        durable.fsync_file(tmp)
        durable.publish(tmp, target, sync_dir=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


# ----------------------------------------------------------------------------- reading


def _open(work, modality):
    import h5py

    path = cache_path(work, modality)
    if not path.is_file():
        hint = (f"shards exist in {shard_dir(work, modality)} but were never consolidated: run the feature stage again"
                if shard_dir(work, modality).is_dir() else "run the feature stage (make features) first")
        raise CacheMissingError(f"no {modality} feature cache at {path}: {hint}")
    f = h5py.File(path, "r")
    if int(f.attrs.get("format", -1)) not in READABLE_FORMATS:
        found = f.attrs.get("format")
        f.close()
        raise CacheError(f"{path} has cache format {found}, this version reads "
                         f"{', '.join(map(str, READABLE_FORMATS))}; delete it and run the feature stage again")
    return f


def _strings(dataset) -> list[str]:
    return [s.decode("utf-8", "surrogatepass") if isinstance(s, bytes) else str(s) for s in dataset[()]]


def load(work: str | os.PathLike, modality: str) -> Features:
    """All videos that have this modality: ids, zero-padded float32 `[n, max L, D]`, lengths."""
    with _open(work, modality) as f:
        ids = _strings(f["ids"])
        offsets = f["offsets"][()]
        data = f["data"]
        n, dim = len(ids), data.shape[1]
        lengths = np.diff(offsets).astype(np.int64)
        width = int(lengths.max()) if n else 0
        x = np.zeros((n, width, dim), dtype=np.float32)
        if n == 0:
            return Features(ids, x, lengths)
        if (lengths == width).all():
            data.read_direct(x.reshape(n * width, dim))
            return Features(ids, x, lengths)
        flat = x.reshape(n * width, dim)
        per_block = max(1, BLOCK_BYTES // max(1, width * dim * 4))
        for a in range(0, n, per_block):
            b = min(n, a + per_block)
            rows = data[offsets[a]:offsets[b]]
            # destination row of every source row: video i's step t goes to i * width + t
            starts = np.arange(a, b, dtype=np.int64) * width - offsets[a:b] + offsets[a]
            dest = np.repeat(starts, lengths[a:b]) + np.arange(rows.shape[0], dtype=np.int64)
            flat[dest] = rows
        return Features(ids, x, lengths)


def load_some(work: str | os.PathLike, modality: str, ids: Iterable[str], columns: slice = slice(None)) -> dict[str, np.ndarray]:
    """The sequences of the listed videos that have this modality, {id: float32 [L, columns]},
    read one video at a time (the report needs a few videos' rows, not the padded whole cache)."""
    wanted = set(ids)
    out: dict[str, np.ndarray] = {}
    with _open(work, modality) as f:
        offsets = f["offsets"][()]
        for i, vid in enumerate(_strings(f["ids"])):
            if vid in wanted:
                out[vid] = np.asarray(f["data"][offsets[i]:offsets[i + 1], columns], dtype=np.float32)
    return out


def missing(work: str | os.PathLike, modality: str) -> dict[str, str]:
    """Videos recorded without this modality: id -> reason."""
    with _open(work, modality) as f:
        return dict(zip(_strings(f["missing_ids"]), _strings(f["missing_reasons"])))


def attributes(work: str | os.PathLike, modality: str) -> dict:
    """The settings the cache was made with (backbone, checkpoint, sha256, weights, ...)."""
    with _open(work, modality) as f:
        return json.loads(f.attrs["attrs_json"])


def fingerprint(work: str | os.PathLike, modality: str) -> str:
    """Changes whenever the consolidated cache's content may have changed (for run reuse)."""
    with _open(work, modality) as f:
        return str(f.attrs["source_digest"])


def random_weights_banner(work: str | os.PathLike, modalities: Iterable[str]) -> str | None:
    """The warning every report prints first when a backbone ran with random weights."""
    return banner_for_attributes({m: attributes(work, m) for m in modalities if exists(work, m)})


def banner_for_attributes(attrs: dict) -> str | None:
    """The random-weights warning for caches described by `attrs` (modality -> cache attributes, as
    `attributes` returns them or a model bundle records them); None when all were pretrained."""
    random_ones = []
    for m, a in attrs.items():
        if str(a.get("weights", "")).lower() == "random":
            random_ones.append(f"{m} ({a['backbone']})" if a.get("backbone") else m)
    if not random_ones:
        return None
    return ("WARNING: RANDOM BACKBONE WEIGHTS for " + ", ".join(random_ones) + ". No pretrained checkpoint was "
            "found, so these features come from untrained networks: the numbers below test the pipeline only and "
            "are NOT comparable with the published results. Put the checkpoints in the weights folder and extract again.")
