"""Running one extraction stage over a manifest: parallel, resumable, and safe with bad input.

A stage is a function of (manifest, work folder). Each video's output is one file,
`W/<stage>/<key><suffix>` (`extract.layout.Work.output`), written under a temporary name,
fsync'ed and renamed into place (`extract.durable`), so a file that exists is complete, even
after a SIGKILL or a power loss: re-running a stage skips what is done and current and finishes
the rest, like denseflow.

The runner leans on one module per guarantee:

* `extract.claims`: the run claims `W/<stage>/` for its settings; a run with other settings is
  refused, and every output is published only while the folder is still claimed with the
  settings it was made with.
* `extract.provenance`: beside each output, what source it was made from; a re-run redoes
  every video whose source changed, and says so.
* `extract.records`: failures.csv and warnings.csv. One broken video never stops the others;
  later stages skip the videos that failed upstream and say so.
* `extract.workers`: joblib workers get a share of the cores and die with the run.
* `extract.cluster`: the same work on a Dask cluster (`--backend dask`).

This module keeps the stage itself (`Stage`, `Summary`, `run_stage`), the worker's side of one
video (`write_output`, `warn`, `for_output`, `current_source`) and the command line, whose
options come from the stage's settings dataclass (`extract.options`). Exit codes are
`extract.cli`'s: 0 every video is done, 1 some failed or were skipped because they failed
upstream (the rest are done), 2 nothing ran or the run itself failed, 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import functools
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from extract import cli, cluster, durable, provenance, records, workers
from extract.claims import claim_settings, hold_claim, output_settings, remove_stale_temporaries
from extract.layout import Work, as_work
from extract.manifest import Video, read_manifest
from extract.media import DEFAULT_TIMEOUT
from extract.options import add_options, option, settings_from

log = logging.getLogger(__name__)

# Per-video problems are in failures.csv and warnings.csv; the log repeats them only with --verbose.
LOG_LEVEL = logging.ERROR


def timeout_option() -> Any:
    """The `timeout` field every stage's settings have (a runtime setting: not part of the claim)."""
    return option(DEFAULT_TIMEOUT, "seconds of FFmpeg per video before it is killed")


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
    # The settings dataclass: its `option` fields are the command's options, and
    # `settings_type(**recorded)` rebuilds the settings a folder's settings.json records
    # (classify.predict runs new videos with a model's own settings).
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
        if self.total and self.failed + self.upstream == self.total:
            return cli.EXIT_ALL_FAILED  # not one video has an output
        return cli.EXIT_SOME_FAILED if self.failed or self.upstream else cli.EXIT_OK

    def line(self, work: str | os.PathLike | Work) -> str:
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
            text += f"; {self.warnings} warning{'s' if self.warnings > 1 else ''}: {as_work(work).warnings(self.stage)}"
        if self.failed:
            text += f"; failures: {as_work(work).failures(self.stage)}"
        return text


# A worker's answer for one video: (id, status "done" | "failed" | "skipped", note or reason, seconds, warnings)
Result = tuple


# ----------------------------------------------------------------------------- running a stage


def run_stage(stage: Stage, videos: Sequence[Video], work: str | os.PathLike | Work, settings: Any,
              jobs: int = 0, backend: str = "joblib", scheduler: str | None = None,
              progress: bool | None = None, gpus_per_task: float = 0) -> Summary:
    """Run `stage` on every video whose output is missing or stale; returns the counts for the summary line.

    Raises SettingsMismatch (the folder is claimed with other settings) before anything runs;
    any other exception is the run's own failure (the caller exits 2)."""
    started = time.perf_counter()
    work = Work(Path(work).resolve())
    with claim_settings(work.stage(stage.name), output_settings(settings), f"{stage.name} settings") as claim:
        removed = remove_stale_temporaries(claim.folder, alone=claim.alone)
        if removed:
            log.info("%s: removed %d temporary file(s) left by an interrupted run", stage.name, removed)
        summary = _run_claimed(stage, videos, work, settings, claim.settings, jobs, backend, scheduler, progress,
                               gpus_per_task)
    summary.seconds = time.perf_counter() - started
    return summary


def _sort_out(stage: Stage, videos: Sequence[Video], work: Work, summary: Summary):
    """Which videos to run: (todo [(video, out)], kept ids, stale reason by id). Outputs that are
    stale, or whose video failed upstream, are deleted here."""
    upstream_failed: dict[str, str] = {}
    for name in stage.upstream:
        for vid, reason in records.read_failures(work, name).items():
            upstream_failed.setdefault(vid, f"skipped: failed in {name} ({reason})")
    todo, kept, redo = [], set(), {}
    for v in videos:
        out = work.output(stage.name, v.id, stage.suffix)
        state = provenance.stale_reason(out, v)
        if state is None and stage.outdated is not None:
            state = stage.outdated(out)
        if state is None:
            summary.skipped += 1
            kept.add(v.id)
        elif v.id in upstream_failed:
            summary.skipped += 1
            summary.upstream += 1
            if state != "missing":
                provenance.remove_output(out)  # its source failed upstream now: the old output is stale
        else:
            if state != "missing":
                redo[v.id] = state
                provenance.remove_output(out)  # a stale output must not outlive a redo that fails
            todo.append((v, out))
    if summary.upstream:
        print(f"{stage.name}: skipping {summary.upstream} video(s) that failed upstream, e.g. "
              f"{next(iter(upstream_failed))!r}", file=sys.stderr)
    if redo:
        print(f"{stage.name}: redoing {len(redo)} video(s) whose output is stale, e.g. "
              f"{next(iter(redo))!r} ({next(iter(redo.values()))})", file=sys.stderr)
    return todo, kept, redo


def _run_claimed(stage: Stage, videos: Sequence[Video], work: Work, settings: Any, claimed: dict,
                 jobs: int, backend: str, scheduler: str | None, progress: bool | None,
                 gpus_per_task: float = 0) -> Summary:
    summary = Summary(stage=stage.name, total=len(videos))
    todo, kept, redo = _sort_out(stage, videos, work, summary)
    jobs = jobs if jobs > 0 else workers.default_jobs()
    threads = max(1, workers.default_jobs() // max(1, jobs))
    failures, warnings = [], []
    by_id = {v.id: v for v, _ in todo}
    group = stage.group_size(settings) if stage.process_group and stage.group_size else 1
    results = _execute(stage, todo, settings, jobs, threads, backend, scheduler, max(1, group), claimed,
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
    records.write_failures(work, stage.name, failures)
    # warnings of the videos kept from earlier runs stay; the rest are this run's
    earlier = [row for row in records.read_warnings(work, stage.name) if row.get("id") in kept]
    records.write_warnings(work, stage.name, earlier + warnings)
    return summary


def _execute(stage: Stage, todo: Sequence[tuple[Video, Path]], settings: Any, jobs: int, threads: int,
             backend: str, scheduler: str | None, group: int = 1,
             claimed: dict | None = None, gpus_per_task: float = 0) -> Iterator[Result]:
    """Per-video results as they finish; with `group` > 1, videos travel to workers in groups."""
    if not todo:
        return iter(())
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    groups = [todo[a:a + group] for a in range(0, len(todo), group)]
    if backend == "dask":
        batches = cluster.map_unordered(functools.partial(_run_batch, stage), groups, settings, 1, claimed,
                                        scheduler=scheduler, jobs=jobs, gpus_per_task=gpus_per_task)
    elif jobs == 1:
        batches = (_run_batch(stage, g, settings, threads, claimed) for g in groups)
    else:
        from joblib import Parallel, delayed

        parent = os.getpid()
        kernel = threading.current_thread() is threading.main_thread()
        parallel = Parallel(n_jobs=jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="2*n_jobs")
        workers.quiet_joblib_workers()  # Ctrl-C: one line from this process, nothing from its workers
        batches = parallel(delayed(_run_batch)(stage, g, settings, threads, claimed, parent, kernel) for g in groups)
    return (result for batch in batches for result in batch)


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


def _run_batch(stage: Stage, items: Sequence[tuple[Video, Path]], settings: Any, threads: int,
               claimed: dict | None = None, parent: int | None = None, kernel_signal: bool = False) -> list[Result]:
    """Worker side: one video or a group. `claimed` is the claim's settings, checked before each
    output is published; `parent` the stage process, which this worker must not outlive."""
    if parent is not None:
        workers.die_with_parent(parent, kernel_signal)
    workers.limit_threads(threads)
    task = _Task(settings=claimed, parent=parent)
    token = _task.set(task)
    try:
        pending = []
        results = []
        for video, out in items:
            source = provenance.source_provenance(video)
            task.sources[Path(out)] = source
            if source is not None and provenance.stale_reason(out, video, source) is None:
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
        return durable.atomic_write(out, write)
    with durable.open_temp(out) as (f, tmp):
        write(f)
    try:
        with hold_claim(out.parent, task.settings):
            workers.check_parent(task.parent)
            durable.publish(tmp, out)
            source = task.sources.get(Path(out))
            if source is not None:
                provenance.write_source_record(out, source)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ----------------------------------------------------------------------------- command line


BACKENDS = ("joblib", "dask")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a stage command runs (not what it writes), besides `cluster.DaskOptions`."""

    jobs: int = option(0, "videos in parallel (0: all cores)")
    backend: str = option("joblib", "joblib: worker processes on this machine; dask: a Dask cluster",
                          choices=BACKENDS)


def stage_parser(stage: Stage, description: str) -> argparse.ArgumentParser:
    """`python -m extract.<stage>`'s arguments: the manifest, the work folder, how to run, and one
    option per field of the stage's settings dataclass (`extract.options`)."""
    parser = cli.parser(f"python -m extract.{stage.name}", description)
    parser.add_argument("--manifest", required=True, help="manifest CSV (python -m extract.manifest)")
    parser.add_argument("--work", required=True, help=f"work folder; outputs go to WORK/{stage.name}/")
    add_options(parser, RunOptions)
    cluster.add_dask_arguments(parser)
    if stage.settings_type is not None:
        add_options(parser.add_argument_group(f"{stage.name} settings"), stage.settings_type)
    return parser


def run_command(stage: Stage, args: argparse.Namespace) -> int:
    """The body of a stage command: read the manifest, run the stage with the settings the
    options give, print the summary line; returns the exit code (run it through `cli.run`)."""
    settings = settings_from(args, stage.settings_type)
    run = settings_from(args, RunOptions)
    dask = settings_from(args, cluster.DaskOptions)
    cluster.check_backend(run.backend, dask.scheduler)
    videos = read_manifest(args.manifest)
    if dask.scheduler:
        cluster.check_scheduler(dask.scheduler, dask.connect_timeout)
    summary = run_stage(stage, videos, args.work, settings, jobs=run.jobs, backend=run.backend,
                        scheduler=dask.scheduler, gpus_per_task=dask.gpus_per_task)
    print(summary.line(args.work))
    if summary.exit_code == cli.EXIT_ALL_FAILED:
        print(f"error: every video failed in {stage.name}; see {Work(args.work).failures(stage.name)}",
              file=sys.stderr)
    return summary.exit_code
