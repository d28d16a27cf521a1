"""Running one extraction stage over a manifest: parallel, resumable, and safe with bad input.

A stage is a function of (manifest, work folder). Each video's output is one file,
`W/<stage>/<key><suffix>`, written under a temporary name, fsync'ed and renamed into place
(`extract.durable`), so a file that exists is complete, even after a SIGKILL or a power loss:
re-running a stage (after a crash, a SIGKILL or a new manifest row) skips what is done and
current and finishes the rest, like denseflow.

What guards the outputs:

* **Settings claim** (`claim_settings`): a run claims `W/<stage>/` for its settings under an
  exclusive `flock` of `W/<stage>/settings.lock` and holds a shared lock on it until it ends.
  Another run with other settings is refused (exit 2); runs with the same settings share the
  folder. Every output is published under that lock after checking that the folder is still
  claimed with the settings it was made with (`hold_claim`): a file never lands in a folder
  claimed for other settings, even from a worker of a run whose folder was deleted and
  re-claimed meanwhile.
* **Workers die with the run**: joblib workers get a parent-death signal (Linux `prctl`) and
  also watch their parent; they never publish once the stage process is gone.
* **Provenance** (`provenance`, `stale_reason`): beside each output, `<key>.source.json`
  records the source video's resolved path, size and mtime_ns (and the clip's start/end) and the
  output's own size and mtime_ns. A re-run redoes, and says so, every video whose source
  changed; checking costs two `stat` calls and one small read per video. Flow and audio decode
  the source video themselves (frames are only their failure list), so they check the source,
  not the frames output.
* **Warnings**: a video processed with a problem that did not stop it (decoded length and
  declared length disagree) gets a row (id, path, stage, warning) in `W/<stage>/warnings.csv`.

A video that fails gets a row (id, path, stage, reason) in `W/<stage>/failures.csv` and never
stops the others; later stages skip the videos that failed upstream and say so.

Exit codes of every stage command:
  0  every video is done (or was already done)
  1  some videos failed or were skipped because they failed upstream; the rest are done
  2  nothing ran, or the run itself failed: bad arguments, unreadable manifest, settings that
     clash with the work folder or with another run using it, or an error outside any single
     video (a full disk while writing settings.json or failures.csv, ...). One line
     `error: ...` on stderr; the traceback only with --verbose.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import csv
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import signal
import stat as stat_module
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from extract import csvcells, durable
from extract.manifest import ManifestError, Video, read_manifest

log = logging.getLogger(__name__)

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_RUN_FAILED = 2  # the run itself failed (same code as "nothing ran": the Makefile stops on both)
FAILURE_COLUMNS = ("id", "path", "stage", "reason")
WARNING_COLUMNS = ("id", "path", "stage", "warning")
FREE_TEXT = ("path", "reason", "warning")  # guarded against spreadsheet formulas (extract.csvcells)
SETTINGS_FILE, LOCK_FILE = "settings.json", "settings.lock"
SOURCE_SUFFIX = ".source.json"


class SettingsMismatch(RuntimeError):
    """The work folder holds outputs made with other settings; mixing them would mislabel numbers."""


class ClaimLost(RuntimeError):
    """The folder is no longer claimed with the settings this output was made with: it is discarded."""


# ----------------------------------------------------------------------------- file names


def video_key(video_id: str) -> str:
    """A file name for any id: readable slug plus a hash, so `../x`, spaces or accents stay inside W."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", video_id).strip("_")[:60] or "video"
    digest = hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:12]
    return f"{slug}-{digest}"


def stage_dir(work: str | os.PathLike, stage: str) -> Path:
    return Path(work) / stage


def output_path(work: str | os.PathLike, stage: str, video_id: str, suffix: str) -> Path:
    return stage_dir(work, stage) / f"{video_key(video_id)}{suffix}"


def source_record_path(out: str | os.PathLike) -> Path:
    """The provenance record beside an output: `<key>.source.json` for `<key>.npz`."""
    return Path(_record_name(os.fspath(out)))


def atomic_write(path: Path, write: Callable[[Any], None], sync_dir: bool = False) -> Path:
    """Call `write(file_object)` on a temporary file beside `path`, fsync it, rename it into place
    (and with `sync_dir` fsync the folder after): `extract.durable.atomic_write`."""
    return durable.atomic_write(path, write, sync_dir=sync_dir)


_LEGACY_TMP = re.compile(r"^\..+\.\d+\.tmp$")  # `.<name>.<pid>.tmp`, as versions before 0.2 wrote


def remove_stale_temporaries(folder: Path, alone: bool = False) -> int:
    """Delete the temporary files in `folder` whose owner process is dead (`durable.remove_dead_temps`).

    With `alone` (the caller holds the folder's claim exclusively, so no live run and no worker
    of one can be writing there) temporaries of other hosts and old-style names go too."""
    if not alone:
        return durable.remove_dead_temps(folder)
    return durable.remove_dead_temps(folder, extra=lambda name: name.startswith(durable.TMP_PREFIX)
                                     or bool(_LEGACY_TMP.match(name)))


# ----------------------------------------------------------------------------- claims


def _read_settings(folder: Path, settings_file: str) -> dict | None:
    path = folder / settings_file
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SettingsMismatch(f"{path} cannot be read ({exc}); delete {folder} to start over") from None


def _differences(found: dict, wanted: dict, ignore: Sequence[str]) -> dict:
    keys = sorted((set(found) | set(wanted)) - set(ignore))
    return {k: (found.get(k), wanted.get(k)) for k in keys if found.get(k) != wanted.get(k)}


@dataclasses.dataclass
class Claim:
    """A held claim: the folder, its settings as recorded, and whether this run was alone when it
    claimed (no other run held the folder, so nothing in it can be another live run's)."""

    folder: Path
    settings: dict
    alone: bool


@contextlib.contextmanager
def claim_settings(folder: str | os.PathLike, settings: dict, what: str, settings_file: str = SETTINGS_FILE,
                   ignore: Sequence[str] = (), wait: float = 60.0) -> Iterator[Claim]:
    """Claim `folder` for outputs made with `settings` (a JSON-able dict) for the `with` block.

    Contract, for any stage that writes per-item files into one folder:

    * The folder gets `settings.lock`; the settings live in `folder/settings_file` (written
      atomically and durably by the first run, never changed after).
    * Claiming takes an exclusive `fcntl.flock` on the lock file (without waiting when other runs
      hold the folder), compares with or writes the settings file, then holds a **shared** lock
      until the block ends. A run that finds other runs holding it takes the shared lock (waiting
      only while another run is claiming) and compares.
    * Settings that differ (keys in `ignore` excepted, e.g. runtime-only ones) raise
      `SettingsMismatch` with a one-line message naming each difference: the caller exits 2.
      Equal settings share the folder: concurrent runs may write different or the same items;
      every item file is complete and made with these settings.
    * `Claim.alone` is True when no other run held the folder: only then may the caller delete
      files that it cannot prove dead (temporaries of other hosts, old-style names).
    * Whoever publishes an item file into the folder does so inside `hold_claim(folder,
      settings)`, which fails with `ClaimLost` if the folder was deleted or re-claimed
      meanwhile; a new claim waits for such a publication to finish.
    * The lock is an `flock`: released by the kernel when the process dies (SIGKILL included), so
      a killed run never blocks the next one. On a network file system flock must be supported.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = json.loads(json.dumps(settings, sort_keys=True, default=str))
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while another run claims or publishes
                alone = False
            found = _read_settings(folder, settings_file)
            if found is None and not alone:
                # another run holds the folder but has not claimed it yet (it is claiming, or it
                # died before writing): let go and try again
                fcntl.flock(fd, fcntl.LOCK_UN)
                if time.monotonic() > deadline:
                    raise SettingsMismatch(f"{folder} is held by another run that never recorded its {what}; "
                                           f"is it stuck? Stop it, or use another --work folder")
                time.sleep(0.05)
                continue
            break
        if found is None:
            durable.atomic_write_bytes(folder / settings_file,
                                       json.dumps(wanted, indent=2, sort_keys=True).encode("utf-8"), sync_dir=True)
            found = wanted
        diff = _differences(found, wanted, ignore)
        if diff:
            shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            who = "was made with" if alone else "is being filled by another run with"
            raise SettingsMismatch(f"{folder} {who} other {what} ({shown}); "
                                   f"use another --work folder, or delete {folder} to start over")
        if alone:
            fcntl.flock(fd, fcntl.LOCK_SH)  # keep the folder; let runs with the same settings join
        yield Claim(folder, found, alone)
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def hold_claim(folder: str | os.PathLike, settings: dict, settings_file: str = SETTINGS_FILE,
               ignore: Sequence[str] = ()) -> Iterator[None]:
    """Inside the block the folder is claimed with `settings` and stays so: publish files here.

    Takes a shared `flock` of the folder's lock file (a new claim waits for it) and checks the
    settings file; raises `ClaimLost` when the folder, its lock or its settings are gone or
    differ (the folder was deleted, or deleted and claimed by a run with other settings)."""
    folder = Path(folder)
    wanted = json.loads(json.dumps(settings, sort_keys=True, default=str))
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        raise ClaimLost(f"{folder} is no longer claimed (deleted?); output discarded") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            found = _read_settings(folder, settings_file)
        except SettingsMismatch as exc:
            raise ClaimLost(str(exc)) from None
        if found is None or _differences(found, wanted, ignore):
            raise ClaimLost(f"{folder} is now claimed with other settings than this output's; output discarded")
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- provenance


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


def read_source_record(out: str | os.PathLike) -> dict | None:
    """The record written beside an output (`{"source": ..., "output": ...}`), or None."""
    try:
        with open(_record_name(os.fspath(out)), "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _record_name(out: str) -> str:
    folder, name = os.path.split(out)
    return os.path.join(folder, name.split(".", 1)[0] + SOURCE_SUFFIX)


def stale_reason(out: str | os.PathLike, video: Video, source: dict | None = None) -> str | None:
    """None when the output `out` exists and is current for `video`; otherwise why not:
    "missing", "no source record" (made before records were kept, or killed before its record
    was written), "output changed" (the file is not the one the record describes), "source
    changed" (another file, or the same file modified, or other clip bounds).

    Costs a `stat` of the output and of the source and one small read: about 1 s for 31,761
    videos from the page cache on the 2-core build machine (`python -m extract.bench_reliability`).
    The feature stage can use it to check that the stage output it reads is current."""
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


# ----------------------------------------------------------------------------- the worker's side


@dataclasses.dataclass
class _Task:
    """What a worker knows while it processes videos: the claim it publishes under, its parent,
    each output's source record and the warnings raised for it."""

    settings: dict | None
    parent: int | None
    sources: dict = dataclasses.field(default_factory=dict)
    warnings: dict = dataclasses.field(default_factory=dict)
    current: Path | None = None


_task: contextvars.ContextVar[_Task | None] = contextvars.ContextVar("extract_stage_task", default=None)


@contextlib.contextmanager
def for_output(out: Path) -> Iterator[None]:
    """Attribute `warn` calls inside the block to the video whose output is `out` (for stages
    that process several videos in one call, like the grouped flow stage)."""
    task = _task.get()
    if task is None:
        yield
        return
    before, task.current = task.current, Path(out)
    try:
        yield
    finally:
        task.current = before


def warn(text: str | None) -> None:
    """Record a warning for the video being processed (a row of the stage's warnings.csv).

    Outside a stage run (a direct call) the warning is logged."""
    if not text:
        return
    task = _task.get()
    if task is None or task.current is None:
        log.warning("%s", text)
        return
    task.warnings.setdefault(task.current, []).append(text)


def current_source() -> dict | None:
    """The source record of the video being processed (None outside a stage run)."""
    task = _task.get()
    return task.sources.get(task.current) if task is not None and task.current is not None else None


def write_output(out: Path, write: Callable[[Any], None]) -> Path:
    """Publish a stage output: what every stage's `process` calls to write its file.

    Inside a stage run: `write(file)` fills a temporary file (fsync'ed); then, holding the claim
    (`hold_claim`) and with the stage process still alive, it is renamed into place and its
    provenance record written beside it. If the folder is no longer claimed with this run's
    settings the file is discarded (`ClaimLost`). Outside a stage run (a direct call) it is a
    plain durable `atomic_write`."""
    task = _task.get()
    if task is None or task.settings is None:
        return atomic_write(out, write)
    with durable.open_temp(out) as (f, tmp):
        write(f)
    try:
        with hold_claim(out.parent, task.settings):
            _check_parent(task.parent)
            durable.publish(tmp, out)
            source = task.sources.get(Path(out))
            if source is not None:
                st = os.stat(out)
                record = {"source": source, "output": {"size": st.st_size, "mtime_ns": st.st_mtime_ns}}
                # no fsync: a record lost or emptied by a power loss reads as "no source record",
                # and the video is redone; the output itself was fsync'ed before its rename
                durable.atomic_write_bytes(source_record_path(out), json.dumps(record, sort_keys=True).encode("utf-8"),
                                           sync=False)
    finally:
        tmp.unlink(missing_ok=True)
    return out


_PR_SET_PDEATHSIG = 1
_watched_parent: int | None = None


def _die_with_parent(parent: int, signal_from_kernel: bool) -> None:
    """Make this worker process end when the stage process `parent` does.

    Linux: `prctl(PR_SET_PDEATHSIG, SIGKILL)` (the kernel kills us when the thread that started
    us ends; asked only when that was the parent's main thread, which lives as long as the run).
    Everywhere: a daemon thread that checks the parent every 0.2 s, and a check before each
    publication (`_check_parent`)."""
    global _watched_parent
    if _watched_parent == parent:
        _check_parent(parent)
        return
    if signal_from_kernel and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    _watched_parent = parent
    _check_parent(parent)  # the parent may have died before prctl took effect

    def watch():
        while True:
            time.sleep(0.2)
            _check_parent(parent)

    threading.Thread(target=watch, name="stage-parent-watch", daemon=True).start()


def _check_parent(parent: int | None) -> None:
    if parent is not None and os.getppid() != parent:
        os._exit(70)  # orphaned: the run is gone, nothing of ours may be published any more


# ----------------------------------------------------------------------------- failures and warnings


def failures_path(work: str | os.PathLike, stage: str) -> Path:
    return stage_dir(work, stage) / "failures.csv"


def warnings_path(work: str | os.PathLike, stage: str) -> Path:
    return stage_dir(work, stage) / "warnings.csv"


def read_failures(work: str | os.PathLike, stage: str) -> dict[str, str]:
    """id -> reason for the videos that failed in `stage`'s last run (empty if it never ran)."""
    path = failures_path(work, stage)
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["id"]: csvcells.unguard(row["reason"]) for row in csv.DictReader(f)}


def read_warnings(work: str | os.PathLike, stage: str) -> list[dict]:
    """The rows of `W/<stage>/warnings.csv` (id, path, stage, warning); empty if there is none."""
    path = warnings_path(work, stage)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [csvcells.unguard_fields(row, FREE_TEXT) for row in csv.DictReader(f)]


def _write_failures(work: Path, stage: str, rows: Sequence[dict]) -> None:
    atomic_write(failures_path(work, stage), lambda f: f.write(_csv_text(rows, FAILURE_COLUMNS).encode("utf-8")),
                 sync_dir=True)


def _write_warnings(work: Path, stage: str, rows: Sequence[dict]) -> None:
    path = warnings_path(work, stage)
    if not rows and not path.exists():
        return
    atomic_write(path, lambda f: f.write(_csv_text(rows, WARNING_COLUMNS).encode("utf-8")), sync_dir=True)


def _csv_text(rows: Sequence[dict], columns: Sequence[str] = FAILURE_COLUMNS) -> str:
    import io

    buf = io.StringIO()
    writer = csvcells.dict_writer(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(csvcells.guard_fields(row, FREE_TEXT) for row in rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the stage


@dataclasses.dataclass(frozen=True)
class Stage:
    """What a stage is: its folder name, output suffix, per-video function and upstream stages.

    `process(video, out_path, settings)` writes the video's output to `out_path` with
    `write_output` (atomically, under the run's claim, with its provenance record) and returns an
    optional note such as "no audio stream"; it raises on failure with a message that says what
    is wrong with the video, and reports problems that did not stop it with `warn`.
    """

    name: str
    suffix: str
    process: Callable[[Video, Path, Any], str | None]
    upstream: tuple[str, ...] = ()
    # Optional batched form, for work that is cheaper in bulk (several videos' flow pairs in one
    # GPU call): `process_group(items, settings)` takes [(video, out_path), ...] and returns, per
    # item, its note (str or None) or the exception that made that one video fail; it wraps
    # each video's work in `for_output(out_path)` so that warnings go to the right video.
    # `group_size(settings)` says how many videos go into one call (1: use `process`).
    process_group: Callable[[Sequence[tuple[Video, Path]], Any], list] | None = None
    group_size: Callable[[Any], int] | None = None
    # The settings dataclass; `settings_type(**recorded)` rebuilds the settings a folder's
    # settings.json records (classify.predict runs new videos with a model's own settings).
    settings_type: type | None = None
    # Optional: why an output that is current for its source must still be redone, because an
    # earlier version of the stage wrote less than this one does (the audio stage's "no
    # waveform"), or None. Called on every kept output at the start of a run.
    outdated: Callable[[Path], str | None] | None = None


@dataclasses.dataclass
class Summary:
    stage: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    upstream: int = 0
    notes: dict[str, int] = dataclasses.field(default_factory=dict)
    redone: dict[str, int] = dataclasses.field(default_factory=dict)
    warnings: int = 0
    seconds: float = 0.0
    video_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed or self.upstream else EXIT_OK

    def line(self, work: Path) -> str:
        text = f"{self.stage}: done {self.done} / skipped {self.skipped} / failed {self.failed} (of {self.total} videos"
        if self.upstream:
            text += f"; {self.upstream} of the skipped failed upstream"
        text += f"; {self.seconds:.1f} s"
        if self.done:
            text += f", {self.video_seconds / self.done:.2f} s per video in a worker"
        text += ")"
        for reason, count in sorted(self.redone.items()):
            text += f"; redone {count} ({reason})"
        for note, count in sorted(self.notes.items()):
            text += f"; {count} {note}"
        if self.warnings:
            text += f"; {self.warnings} warning{'s' if self.warnings > 1 else ''}: {warnings_path(work, self.stage)}"
        if self.failed:
            text += f"; failures: {failures_path(work, self.stage)}"
        return text


# A worker's answer for one video: (id, status "done" | "failed" | "skipped", note or reason, seconds, warnings)
Result = tuple


def _run_single(stage: Stage, task: _Task, video: Video, out_path: Path, settings: Any) -> Result:
    started = time.perf_counter()
    with for_output(out_path):
        try:
            note = stage.process(video, out_path, settings)
        except Exception as exc:  # recorded in failures.csv with its type; the run goes on
            log.debug("%s failed on %r", stage.name, video.id, exc_info=True)
            return video.id, "failed", _reason(exc), time.perf_counter() - started, task.warnings.get(out_path, [])
    return video.id, "done", note or "", time.perf_counter() - started, task.warnings.get(out_path, [])


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def _run_group(stage: Stage, task: _Task, items: Sequence[tuple[Video, Path]], settings: Any) -> list[Result]:
    """Worker side: several videos in one `process_group` call; each video fails or succeeds alone.

    If the call as a whole raises (say the GPU ran out of memory on the joint batch), every
    video of the group is retried on its own with `process`.
    """
    started = time.perf_counter()
    try:
        outcomes = stage.process_group(items, settings)
    except Exception:  # the batch failed, not necessarily any one video: isolate them
        log.debug("%s: a group of %d videos failed as a whole; retrying one by one", stage.name, len(items),
                  exc_info=True)
        task.warnings.clear()
        return [_run_single(stage, task, v, out, settings) for v, out in items]
    each = (time.perf_counter() - started) / max(1, len(items))
    results = []
    for (video, out), outcome in zip(items, outcomes, strict=True):
        warnings = task.warnings.get(out, [])
        if isinstance(outcome, BaseException):
            log.debug("%s failed on %r: %s", stage.name, video.id, outcome)
            results.append((video.id, "failed", _reason(outcome), each, warnings))
        else:
            results.append((video.id, "done", outcome or "", each, warnings))
    return results


_threads_set: int | None = None


def _limit_threads(threads: int) -> None:
    """Parallel workers each get a share of the cores, so N workers do not fight over them."""
    global _threads_set
    if _threads_set == threads:
        return
    import cv2

    cv2.setNumThreads(threads)
    torch = sys.modules.get("torch")  # only when a stage already uses it: importing torch costs seconds
    if torch is not None:
        torch.set_num_threads(threads)
    _threads_set = threads


# Settings that change how a stage runs, not what it writes: free to differ between runs.
RUNTIME_SETTINGS = ("timeout", "batch_pairs", "batch_videos")


def _output_settings(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in RUNTIME_SETTINGS}


def output_settings(settings: Any) -> dict:
    """The settings a stage's outputs are made with, as recorded in its settings.json (the
    runtime-only ones, `RUNTIME_SETTINGS`, left out)."""
    return _output_settings(json.loads(json.dumps(dataclasses.asdict(settings), default=str)))


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_stage(stage: Stage, videos: Sequence[Video], work: str | os.PathLike, settings: Any,
              jobs: int = 0, backend: str = "joblib", scheduler: str | None = None,
              progress: bool | None = None, gpus_per_task: float = 0) -> Summary:
    """Run `stage` on every video whose output is missing or stale; returns the counts for the summary line.

    Raises SettingsMismatch (the folder is claimed with other settings) before anything runs;
    any other exception is the run's own failure (the caller exits 2)."""
    started = time.perf_counter()
    work = Path(work).resolve()
    folder = stage_dir(work, stage.name)
    claimed = output_settings(settings)
    with claim_settings(folder, claimed, f"{stage.name} settings") as claim:
        summary = _run_claimed(stage, videos, work, folder, settings, claim, jobs, backend, scheduler, progress,
                               gpus_per_task)
    summary.seconds = time.perf_counter() - started
    return summary


def _run_claimed(stage: Stage, videos: Sequence[Video], work: Path, folder: Path, settings: Any, claim: Claim,
                 jobs: int, backend: str, scheduler: str | None, progress: bool | None,
                 gpus_per_task: float = 0) -> Summary:
    removed = remove_stale_temporaries(folder, alone=claim.alone)
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", stage.name, removed)

    summary = Summary(stage=stage.name, total=len(videos))
    upstream_failed: dict[str, str] = {}
    for name in stage.upstream:
        for vid, reason in read_failures(work, name).items():
            upstream_failed.setdefault(vid, f"skipped: failed in {name} ({reason})")
    todo, kept = [], set()
    redo: dict[str, str] = {}
    for v in videos:
        out = output_path(work, stage.name, v.id, stage.suffix)
        state = stale_reason(out, v)
        if state is None and stage.outdated is not None:
            state = stage.outdated(out)
        if state is None:
            summary.skipped += 1
            kept.add(v.id)
        elif v.id in upstream_failed:
            summary.skipped += 1
            summary.upstream += 1
            if state != "missing":
                _discard_output(out)  # its source failed upstream now: the old output is stale
        else:
            if state != "missing":
                redo[v.id] = state
                _discard_output(out)  # a stale output must not outlive a redo that fails
            todo.append((v, out))
    if summary.upstream:
        print(f"{stage.name}: skipping {summary.upstream} video(s) that failed upstream, e.g. "
              f"{next(iter(upstream_failed))!r}", file=sys.stderr)
    if redo:
        print(f"{stage.name}: redoing {len(redo)} video(s) whose output is stale, e.g. "
              f"{next(iter(redo))!r} ({next(iter(redo.values()))})", file=sys.stderr)

    jobs = jobs if jobs > 0 else default_jobs()
    threads = max(1, default_jobs() // max(1, jobs))
    failures, warnings = [], []
    by_id = {v.id: v for v, _ in todo}
    group = stage.group_size(settings) if stage.process_group and stage.group_size else 1
    results = _execute(stage, todo, settings, jobs, threads, backend, scheduler, max(1, group), claim.settings,
                       gpus_per_task)
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    for vid, status, detail, seconds, notes in tqdm(results, total=len(todo), desc=stage.name, unit="video",
                                                   disable=not show, file=sys.stderr):
        for text in notes:
            warnings.append({"id": vid, "path": by_id[vid].path, "stage": stage.name, "warning": text})
            log.warning("%s: %r: %s", stage.name, vid, text)
        if status == "done":
            summary.done += 1
            summary.video_seconds += seconds
            if detail:
                summary.notes[detail] = summary.notes.get(detail, 0) + 1
            if vid in redo:
                summary.redone[redo[vid]] = summary.redone.get(redo[vid], 0) + 1
        elif status == "skipped":  # another run with the same settings did it meanwhile
            summary.skipped += 1
            kept.add(vid)
        else:
            summary.failed += 1
            failures.append({"id": vid, "path": by_id[vid].path, "stage": stage.name, "reason": detail})
            log.warning("%s failed on %r: %s", stage.name, vid, detail)
    summary.warnings = len(warnings)
    _write_failures(work, stage.name, failures)
    # warnings of the videos kept from earlier runs stay; the rest are this run's
    earlier = [row for row in read_warnings(work, stage.name) if row.get("id") in kept]
    _write_warnings(work, stage.name, earlier + warnings)
    return summary


def _discard_output(out: Path) -> None:
    out.unlink(missing_ok=True)
    source_record_path(out).unlink(missing_ok=True)


def _execute(stage: Stage, todo: Sequence[tuple[Video, Path]], settings: Any, jobs: int, threads: int,
             backend: str, scheduler: str | None, group: int = 1,
             claimed: dict | None = None, gpus_per_task: float = 0) -> Iterator[Result]:
    """Per-video results as they finish; with `group` > 1, videos travel to workers in groups."""
    if not todo:
        return iter(())
    if backend not in ("joblib", "dask"):
        raise ValueError(f"unknown backend {backend!r}: use joblib or dask")
    groups = [todo[a:a + group] for a in range(0, len(todo), group)]
    if backend == "dask":
        batches = _execute_dask(stage, groups, settings, scheduler, jobs, claimed, gpus_per_task)
    elif jobs == 1:
        batches = (_run_batch(stage, g, settings, threads, claimed) for g in groups)
    else:
        from joblib import Parallel, delayed

        parent = os.getpid()
        kernel = threading.current_thread() is threading.main_thread()
        parallel = Parallel(n_jobs=jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="2*n_jobs")
        batches = parallel(delayed(_run_batch)(stage, g, settings, threads, claimed, parent, kernel) for g in groups)
    return (result for batch in batches for result in batch)


def _run_batch(stage: Stage, items: Sequence[tuple[Video, Path]], settings: Any, threads: int,
               claimed: dict | None = None, parent: int | None = None, kernel_signal: bool = False) -> list[Result]:
    """Worker side: one video or a group. `claimed` is the claim's settings, checked before each
    output is published; `parent` the stage process, which this worker must not outlive."""
    if parent is not None:
        _die_with_parent(parent, kernel_signal)
    _limit_threads(threads)
    task = _Task(settings=claimed, parent=parent)
    token = _task.set(task)
    try:
        pending = []
        results = []
        for video, out in items:
            source = source_provenance(video)
            task.sources[Path(out)] = source
            if source is not None and stale_reason(out, video, source) is None:
                results.append((video.id, "skipped", "done by another run", 0.0, []))
            else:
                pending.append((video, out))
        if len(pending) == 1 or (pending and stage.process_group is None):
            results += [_run_single(stage, task, v, out, settings) for v, out in pending]
        elif pending:
            results += _run_group(stage, task, pending, settings)
        return results
    finally:
        _task.reset(token)


@contextlib.contextmanager
def dask_client(scheduler: str | None, jobs: int = 0, gpus_per_task: float = 0) -> Iterator[Any]:
    """A `dask.distributed.Client` for a run: of the cluster at `scheduler`, or of a LocalCluster
    of `jobs` single-threaded worker processes (0: one per core) that lives as long as the block.

    A local cluster with `gpus_per_task` has one worker declaring that many `GPU` resources (a
    machine's one GPU taken one task at a time); several GPUs need a scheduler and one worker per
    GPU (`CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nthreads 1 --resources GPU=1`)."""
    from dask.distributed import Client, LocalCluster

    cluster = None
    if not scheduler:
        workers = 1 if gpus_per_task else (jobs if jobs > 0 else default_jobs())
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               resources={"GPU": gpus_per_task} if gpus_per_task else None)
    try:
        client = Client(scheduler or cluster)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def gpu_resources(gpus_per_task: float) -> dict | None:
    """`submit(..., resources=...)` for a task that needs GPUs: Dask then runs at most as many at
    once on a worker as its declared `GPU` resources allow (`dask worker --resources GPU=1`)."""
    return {"GPU": gpus_per_task} if gpus_per_task else None


def _execute_dask(stage: Stage, groups, settings, scheduler: str | None, jobs: int, claimed: dict | None = None,
                  gpus_per_task: float = 0):
    """The same functions on a Dask cluster; workers write to the (shared) work folder."""
    from dask.distributed import as_completed

    with dask_client(scheduler, jobs, gpus_per_task) as client:
        futures = [client.submit(_run_batch, stage, g, settings, 1, claimed, pure=False,
                                 resources=gpu_resources(gpus_per_task)) for g in groups]
        for future in as_completed(futures):
            yield future.result()


# ----------------------------------------------------------------------------- command line


def stage_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The arguments every stage shares; stages add their own."""
    parser = argparse.ArgumentParser(prog=f"python -m extract.{name}", description=description,
                                     epilog="exit codes: 0 all done; 1 some videos failed (see W/<stage>/failures.csv); "
                                            "2 nothing ran, or the run itself failed (one line 'error: ...')",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--manifest", required=True, help="manifest CSV (python -m extract.manifest)")
    parser.add_argument("--work", required=True, help="work folder; outputs go to WORK/%s/" % name)
    parser.add_argument("--jobs", type=int, default=0, help="videos in parallel (0: all cores)")
    parser.add_argument("--backend", choices=("joblib", "dask"), default="joblib")
    add_dask_arguments(parser)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds of FFmpeg per video before it is killed")
    parser.add_argument("--verbose", action="store_true", help="log every video's problems; tracebacks of crashes")
    return parser


def add_dask_arguments(parser: argparse.ArgumentParser) -> None:
    """--scheduler and --gpus-per-task, shared by the stages and the feature stage."""
    parser.add_argument("--scheduler", help="dask.distributed scheduler address (with --backend dask; default: a local "
                                            "cluster of --jobs worker processes)")
    parser.add_argument("--gpus-per-task", type=float, default=0,
                        help="with --backend dask: GPU resources each task needs; workers started with "
                             "--resources GPU=1 then run one such task per GPU at a time")


def add_geometry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-frames", type=int, default=79, help="frames picked per video (79 as published)")
    parser.add_argument("--size", type=int, default=224, help="side of the square frames")
    parser.add_argument("--resize", choices=("crop", "squash"), default="crop",
                        help="crop: short side size*256/224 then centre crop (I3D protocol); squash: published 224x224 squash")


def run_failed(exc: BaseException, verbose: bool = False, stream=None) -> int:
    """Report a failure of the run itself: one line `error: ...` (the traceback first with
    `verbose`); returns `EXIT_RUN_FAILED`. For every command, so that exit 1 keeps meaning
    "some videos failed, the rest are done"."""
    stream = stream if stream is not None else sys.stderr
    if verbose:
        traceback.print_exception(exc, file=stream)
    if isinstance(exc, (ManifestError, SettingsMismatch)):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        text = f"disk full: {exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    hint = "" if verbose or isinstance(exc, (ManifestError, SettingsMismatch)) else " (--verbose for the traceback)"
    print(f"error: {text}{hint}", file=stream)
    return EXIT_RUN_FAILED


def run_command(stage: Stage, args: argparse.Namespace, settings: Any) -> int:
    """Read the manifest, run the stage, print the summary line; returns the exit code."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s: %(message)s")
    try:
        videos = read_manifest(args.manifest)
        summary = run_stage(stage, videos, args.work, settings, jobs=args.jobs, backend=args.backend,
                            scheduler=args.scheduler, gpus_per_task=args.gpus_per_task)
        print(summary.line(Path(args.work)))
    except Exception as exc:  # the run itself failed, not one video: never exit 1
        return run_failed(exc, getattr(args, "verbose", False))
    return summary.exit_code
