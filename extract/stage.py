"""Running one extraction stage over a manifest: parallel, resumable, and safe with bad input.

A stage is a function of (manifest, work folder). Each video's output is one file,
`W/<stage>/<key><suffix>`, written under a temporary name and renamed into place, so a file
that exists is complete: re-running a stage (after a crash, a SIGKILL or a new manifest row)
skips what exists and finishes the rest, like denseflow.

A video that fails gets a row (id, path, stage, reason) in `W/<stage>/failures.csv` and never
stops the others; later stages skip the videos that failed upstream and say so.

Exit codes of every stage command:
  0  every video is done (or was already done)
  1  some videos failed or were skipped because they failed upstream; the rest are done
  2  nothing ran: bad arguments, unreadable manifest, or settings that clash with the work folder
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from extract.manifest import ManifestError, Video, read_manifest

log = logging.getLogger(__name__)

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
FAILURE_COLUMNS = ("id", "path", "stage", "reason")


class SettingsMismatch(RuntimeError):
    """The work folder holds outputs made with other settings; mixing them would mislabel numbers."""


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


def atomic_write(path: Path, write: Callable[[Any], None]) -> Path:
    """Call `write(file_object)` on a temporary file beside `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def remove_stale_temporaries(folder: Path) -> int:
    """Temporary files left by a killed run are never complete: delete them."""
    stale = list(folder.glob(".*.tmp"))
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


# ----------------------------------------------------------------------------- failures


def failures_path(work: str | os.PathLike, stage: str) -> Path:
    return stage_dir(work, stage) / "failures.csv"


def read_failures(work: str | os.PathLike, stage: str) -> dict[str, str]:
    """id -> reason for the videos that failed in `stage`'s last run (empty if it never ran)."""
    path = failures_path(work, stage)
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["id"]: row["reason"] for row in csv.DictReader(f)}


def _write_failures(work: Path, stage: str, rows: Sequence[dict]) -> None:
    def write(f):
        text = _csv_text(rows)
        f.write(text.encode("utf-8"))
    atomic_write(failures_path(work, stage), write)


def _csv_text(rows: Sequence[dict]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FAILURE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the stage


@dataclasses.dataclass(frozen=True)
class Stage:
    """What a stage is: its folder name, output suffix, per-video function and upstream stages.

    `process(video, out_path, settings)` writes the video's output to `out_path` (atomically,
    with `atomic_write`) and returns an optional note such as "no audio stream"; it raises on
    failure with a message that says what is wrong with the video.
    """

    name: str
    suffix: str
    process: Callable[[Video, Path, Any], str | None]
    upstream: tuple[str, ...] = ()
    # Optional batched form, for work that is cheaper in bulk (several videos' flow pairs in one
    # GPU call): `process_group(items, settings)` takes [(video, out_path), ...] and returns, per
    # item, its note (str or None) or the exception that made that one video fail.
    # `group_size(settings)` says how many videos go into one call (1: use `process`).
    process_group: Callable[[Sequence[tuple[Video, Path]], Any], list] | None = None
    group_size: Callable[[Any], int] | None = None


@dataclasses.dataclass
class Summary:
    stage: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    upstream: int = 0
    notes: dict[str, int] = dataclasses.field(default_factory=dict)
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
        for note, count in sorted(self.notes.items()):
            text += f"; {count} {note}"
        if self.failed:
            text += f"; failures: {failures_path(work, self.stage)}"
        return text


def _run_one(stage: Stage, video: Video, out_path: Path, settings: Any, threads: int) -> tuple[str, str, str, float]:
    """Worker side: one video. Any exception becomes that video's recorded failure, never the run's."""
    _limit_threads(threads)
    started = time.perf_counter()
    try:
        note = stage.process(video, out_path, settings)
    except Exception as exc:  # recorded in failures.csv with its type; the run goes on
        log.debug("%s failed on %r", stage.name, video.id, exc_info=True)
        return video.id, "failed", _reason(exc), time.perf_counter() - started
    return video.id, "done", note or "", time.perf_counter() - started


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def _run_group(stage: Stage, items: Sequence[tuple[Video, Path]], settings: Any,
               threads: int) -> list[tuple[str, str, str, float]]:
    """Worker side: several videos in one `process_group` call; each video fails or succeeds alone.

    If the call as a whole raises (say the GPU ran out of memory on the joint batch), every
    video of the group is retried on its own with `process`.
    """
    _limit_threads(threads)
    started = time.perf_counter()
    try:
        outcomes = stage.process_group(items, settings)
    except Exception:  # the batch failed, not necessarily any one video: isolate them
        log.debug("%s: a group of %d videos failed as a whole; retrying one by one", stage.name, len(items),
                  exc_info=True)
        return [_run_one(stage, v, out, settings, threads) for v, out in items]
    each = (time.perf_counter() - started) / max(1, len(items))
    results = []
    for (video, _), outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            log.debug("%s failed on %r: %s", stage.name, video.id, outcome)
            results.append((video.id, "failed", _reason(outcome), each))
        else:
            results.append((video.id, "done", outcome or "", each))
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


def _check_settings(folder: Path, stage: str, settings: Any) -> None:
    """Outputs of one folder share one set of settings; a clash is an error, not a silent mix."""
    wanted = _output_settings(json.loads(json.dumps(dataclasses.asdict(settings), default=str)))
    path = folder / "settings.json"
    if path.is_file():
        found = _output_settings(json.loads(path.read_text()))
        if found != wanted:
            diff = {k: (found.get(k), wanted.get(k)) for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k)}
            shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise SettingsMismatch(f"{folder} was made with other {stage} settings ({shown}); "
                                   f"use another --work folder, or delete {folder} to start over")
        return
    atomic_write(path, lambda f: f.write(json.dumps(wanted, indent=2, sort_keys=True).encode()))


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_stage(stage: Stage, videos: Sequence[Video], work: str | os.PathLike, settings: Any,
              jobs: int = 0, backend: str = "joblib", scheduler: str | None = None,
              progress: bool | None = None) -> Summary:
    """Run `stage` on every video that has no output yet; returns the counts for the summary line."""
    started = time.perf_counter()
    work = Path(work).resolve()
    folder = stage_dir(work, stage.name)
    folder.mkdir(parents=True, exist_ok=True)
    _check_settings(folder, stage.name, settings)
    removed = remove_stale_temporaries(folder)
    if removed:
        log.info("%s: removed %d temporary file(s) left by an interrupted run", stage.name, removed)

    summary = Summary(stage=stage.name, total=len(videos))
    existing = {p.name for p in folder.iterdir()}
    upstream_failed: dict[str, str] = {}
    for name in stage.upstream:
        for vid, reason in read_failures(work, name).items():
            upstream_failed.setdefault(vid, f"skipped: failed in {name} ({reason})")
    todo = []
    for v in videos:
        out = output_path(work, stage.name, v.id, stage.suffix)
        if out.name in existing:
            summary.skipped += 1
        elif v.id in upstream_failed:
            summary.skipped += 1
            summary.upstream += 1
        else:
            todo.append((v, out))
    if summary.upstream:
        print(f"{stage.name}: skipping {summary.upstream} video(s) that failed upstream, e.g. "
              f"{next(iter(upstream_failed))!r}", file=sys.stderr)

    jobs = jobs if jobs > 0 else default_jobs()
    threads = max(1, default_jobs() // max(1, jobs))
    failures = []
    by_id = {v.id: v for v, _ in todo}
    group = stage.group_size(settings) if stage.process_group and stage.group_size else 1
    results = _execute(stage, todo, settings, jobs, threads, backend, scheduler, max(1, group))
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    for vid, status, detail, seconds in tqdm(results, total=len(todo), desc=stage.name, unit="video",
                                            disable=not show, file=sys.stderr):
        if status == "done":
            summary.done += 1
            summary.video_seconds += seconds
            if detail:
                summary.notes[detail] = summary.notes.get(detail, 0) + 1
        else:
            summary.failed += 1
            failures.append({"id": vid, "path": by_id[vid].path, "stage": stage.name, "reason": detail})
            log.warning("%s failed on %r: %s", stage.name, vid, detail)
    _write_failures(work, stage.name, failures)
    summary.seconds = time.perf_counter() - started
    return summary


def _execute(stage: Stage, todo: Sequence[tuple[Video, Path]], settings: Any, jobs: int, threads: int,
             backend: str, scheduler: str | None, group: int = 1) -> Iterator[tuple[str, str, str, float]]:
    """Per-video results as they finish; with `group` > 1, videos travel to workers in groups."""
    if not todo:
        return iter(())
    if backend not in ("joblib", "dask"):
        raise ValueError(f"unknown backend {backend!r}: use joblib or dask")
    groups = [todo[a:a + group] for a in range(0, len(todo), group)]
    if backend == "dask":
        batches = _execute_dask(stage, groups, settings, scheduler, jobs)
    elif jobs == 1:
        batches = (_run_batch(stage, g, settings, threads) for g in groups)
    else:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="2*n_jobs")
        batches = parallel(delayed(_run_batch)(stage, g, settings, threads) for g in groups)
    return (result for batch in batches for result in batch)


def _run_batch(stage: Stage, items: Sequence[tuple[Video, Path]], settings: Any, threads: int) -> list:
    if len(items) == 1:
        return [_run_one(stage, items[0][0], items[0][1], settings, threads)]
    return _run_group(stage, items, settings, threads)


def _execute_dask(stage: Stage, groups, settings, scheduler: str | None, jobs: int):
    """The same functions on a Dask cluster; workers write to the (shared) work folder."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None if scheduler else LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True)
    client = Client(scheduler or cluster)
    try:
        futures = [client.submit(_run_batch, stage, g, settings, 1, pure=False) for g in groups]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------- command line


def stage_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The arguments every stage shares; stages add their own."""
    parser = argparse.ArgumentParser(prog=f"python -m extract.{name}", description=description,
                                     epilog="exit codes: 0 all done; 1 some videos failed (see W/<stage>/failures.csv); 2 nothing ran",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--manifest", required=True, help="manifest CSV (python -m extract.manifest)")
    parser.add_argument("--work", required=True, help="work folder; outputs go to WORK/%s/" % name)
    parser.add_argument("--jobs", type=int, default=0, help="videos in parallel (0: all cores)")
    parser.add_argument("--backend", choices=("joblib", "dask"), default="joblib")
    parser.add_argument("--scheduler", help="dask.distributed scheduler address (with --backend dask; default: a local cluster)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds of FFmpeg per video before it is killed")
    parser.add_argument("--verbose", action="store_true", help="log every video's problems")
    return parser


def add_geometry_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-frames", type=int, default=79, help="frames picked per video (79 as published)")
    parser.add_argument("--size", type=int, default=224, help="side of the square frames")
    parser.add_argument("--resize", choices=("crop", "squash"), default="crop",
                        help="crop: short side size*256/224 then centre crop (I3D protocol); squash: published 224x224 squash")


def run_command(stage: Stage, args: argparse.Namespace, settings: Any) -> int:
    """Read the manifest, run the stage, print the summary line; returns the exit code."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s: %(message)s")
    try:
        videos = read_manifest(args.manifest)
        summary = run_stage(stage, videos, args.work, settings, jobs=args.jobs, backend=args.backend,
                            scheduler=args.scheduler)
    except (ManifestError, SettingsMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(summary.line(Path(args.work)))
    return summary.exit_code

