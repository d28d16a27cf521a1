"""The work folder's layout, and the one function that turns a video id into a file name.

Every layer asks a `Work` for its paths instead of joining strings onto a bare folder, so the
layout is written down once:

    W/<stage>/<key>.npz              one stage output per video (frames, flow, audio, faces, ...)
    W/<stage>/<key>.source.json      its provenance record
    W/<stage>/failures.csv           videos that failed in that stage, warnings.csv likewise
    W/features/<modality>.h5         the consolidated feature cache of one modality
    W/features/<modality>.shards/    per-video shards while the feature stage runs
    W/runs/<run name>/               one trained head or one fusion (metrics, predictions)
    W/table/<name>/                  a results table (table.json, table.md, figures)
    W/report/                        the HTML report
    W/predictions.csv                what a model bundle predicted for the work folder's videos

`<key>` is `file_key(id)`: stage outputs and feature shards use the same name for a video.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def file_key(video_id: str) -> str:
    """A file name (no extension) for any id: a readable slug plus 12 hex digits of its SHA-1.

    Ids with spaces, slashes, `../`, accents or any other character map to plain names inside
    their folder, and two ids never share a name (the hash is of the whole id, the slug only
    helps a person find a file)."""
    slug = _UNSAFE.sub("_", video_id).strip("_")[:60] or "video"
    digest = hashlib.sha1(video_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{slug}-{digest}"


class Work:
    """The paths of one work folder. `Work(w)` is cheap; nothing is created until written."""

    FEATURES, RUNS, TABLES, REPORT = "features", "runs", "table", "report"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __fspath__(self) -> str:
        return os.fspath(self.root)

    def __repr__(self) -> str:
        return f"Work({os.fspath(self.root)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Work) and self.root == other.root

    def __hash__(self) -> int:
        return hash(self.root)

    # ------------------------------------------------------------------ extraction stages
    def stage(self, name: str) -> Path:
        """`W/<stage>/`: one file per video."""
        return self.root / name

    def output(self, stage: str, video_id: str, suffix: str) -> Path:
        """`W/<stage>/<file_key(id)><suffix>`."""
        return self.stage(stage) / f"{file_key(video_id)}{suffix}"

    def failures(self, stage: str) -> Path:
        return self.stage(stage) / "failures.csv"

    def warnings(self, stage: str) -> Path:
        return self.stage(stage) / "warnings.csv"

    # ------------------------------------------------------------------ feature caches
    @property
    def features(self) -> Path:
        return self.root / self.FEATURES

    def cache(self, modality: str) -> Path:
        """`W/features/<modality>.h5`, the consolidated cache."""
        return self.features / f"{modality}.h5"

    def shards(self, modality: str) -> Path:
        """`W/features/<modality>.shards/`, per-video shards while extracting."""
        return self.features / f"{modality}.shards"

    # ------------------------------------------------------------------ classifiers
    @property
    def runs(self) -> Path:
        return self.root / self.RUNS

    def run(self, name: str) -> Path:
        return self.runs / name

    @property
    def tables(self) -> Path:
        return self.root / self.TABLES

    def table(self, name: str | None = None) -> Path:
        """`W/table/` or `W/table/<name>/` (one folder per protocol and head)."""
        return self.tables / name if name else self.tables

    @staticmethod
    def table_name(cv, head: str) -> str:
        """The default table folder name of a protocol and head: `fixed-lstm`, `cv5-mlp`, `groups-lstm`."""
        cv = str(cv if cv not in (None, "") else "fixed").strip().lower()
        return f"{cv if cv in ('fixed', 'groups') else 'cv' + cv}-{head}"

    def latest_table(self) -> Path | None:
        """The table folder (`W/table/` or one below it) whose table.json was written last."""
        found = [p for p in [self.tables / "table.json", *self.tables.glob("*/table.json")] if p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime_ns).parent if found else None

    @property
    def report(self) -> Path:
        return self.root / self.REPORT

    @property
    def predictions(self) -> Path:
        """`W/predictions.csv`, written by `classify.predict`."""
        return self.root / "predictions.csv"


def as_work(work: "str | os.PathLike | Work") -> Work:
    """Accept a `Work` or a bare folder (the commands' `--work`)."""
    return work if isinstance(work, Work) else Work(work)


# ------------------------------------------------------------------ output folders that replace themselves
SETTINGS_FILE = "settings.json"


def is_work_folder(path: str | os.PathLike) -> bool:
    """Whether `path` holds a work folder's data: a `features/` or `runs/` folder, or a stage folder
    (a sub-folder with its `settings.json`). The one test every `--out` check uses."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / Work.FEATURES).is_dir() or (p / Work.RUNS).is_dir():
        return True
    try:
        return any(c.is_dir() and (c / SETTINGS_FILE).is_file() for c in p.iterdir())
    except OSError:
        return False


def _work_data(root: Path) -> list[Path]:
    """The folders of a work folder that hold its data (features, runs, stages)."""
    out = [root / Work.FEATURES, root / Work.RUNS]
    out += [c for c in root.iterdir() if c.is_dir() and (c / SETTINGS_FILE).is_file()]
    return out


def work_data_conflict(path: str | os.PathLike) -> str | None:
    """Why `path` may not be replaced as an output folder, or None: it is a work folder, lies inside
    one's data (features, runs, a stage folder), or contains a work folder."""
    p = Path(os.path.abspath(path))
    for a in [p, *p.parents]:
        if is_work_folder(a):
            if a == p:
                return "it is a work folder"
            if any(p == d or d in p.parents for d in _work_data(a)):
                return f"it lies inside the data of the work folder {a}"
    if p.is_dir():
        for dirpath, dirnames, _ in os.walk(p):
            if is_work_folder(dirpath):
                return f"it contains the work folder {dirpath}"
    return None


def check_out(path: str | os.PathLike, marker: str, legacy: frozenset = frozenset(), force: bool = False) -> Path:
    """The absolute folder an `--out` may replace whole, or a `UserError` naming it and why.

    Allowed: a missing or empty folder, or one holding `marker` (written into every bundle or
    report of that kind); also one whose entries all belong to `legacy` (made before the marker
    existed). `force` allows any other folder, except work-folder data, which is never replaced."""
    from extract.cli import UserError

    p = Path(os.path.abspath(path))
    why = work_data_conflict(p)
    if why:
        raise UserError(f"refusing --out {p}: {why}; choose a new folder")
    if p.exists() and not p.is_dir():
        raise UserError(f"refusing --out {p}: it is a file, not a folder")
    if p == Path(p.anchor) or p == Path.home() or p == Path.cwd():
        raise UserError(f"refusing --out {p}: it is the root, home or current folder; choose a new folder")
    if p.is_dir() and not force:
        entries = [c.name for c in p.iterdir()]
        if entries and marker not in entries and not all(e in legacy for e in entries):
            raise UserError(f"refusing --out {p}: the folder is not empty and holds no {marker} (not a previous "
                            f"output of this command); choose a new folder or pass --force to replace it")
    return p
