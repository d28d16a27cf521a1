"""The manifest: one CSV per dataset that every stage reads.

Columns `id,path,label,split`, optionally `start,end` (seconds, for clips cut out of longer
videos such as IEMOCAP utterances), `text` (the caption) and `group` (who or where the video
comes from: publisher, speaker, session; videos of one group never straddle splits that the
builders make, so that a classifier cannot score by recognising the person). Paths are stored relative to the
manifest's folder when they lie below it, so a dataset folder can be moved as a whole.

Builders (`python -m extract.manifest folder|list|iemocap ...`) turn the three source layouts
into a manifest; `python -m extract.manifest check M` reports on one (classes, splits, groups,
leaks, missing files, captions). A missing video file is only a warning here: the stages record it as that one
video's failure, so a 31,761-row manifest with one missing file still runs.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import random
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from extract import cli, csvcells, durable

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".flv", ".wmv", ".mpg", ".mpeg", ".3gp"}
# The published list files carry -1/0/1; the published scripts shift them by +1 to 0/1/2.
LIST_LABELS = {"-1": "negative", "0": "neutral", "1": "positive"}
IEMOCAP_CLASSES = ("neu", "hap", "sad", "ang")
FREE_TEXT = ("path", "text")  # columns guarded against spreadsheet formulas (extract.csvcells); the rest are keys


class ManifestError(cli.UserError, ValueError):
    """A manifest that no stage should run on; the message names the offending rows."""


@dataclasses.dataclass(frozen=True)
class Video:
    id: str
    path: str
    label: str
    split: str = ""
    start: float | None = None
    end: float | None = None
    text: str | None = None
    group: str | None = None


def class_names(videos: Iterable[Video]) -> list[str]:
    """Sorted label names; a label's index in this list is its class index everywhere."""
    return sorted({v.label for v in videos})


# ----------------------------------------------------------------------------- reading, writing


def _float_or_none(value: str | None) -> float | None:
    value = (value or "").strip()
    return float(value) if value else None


def read_manifest(path: str | os.PathLike, require_split: bool = True, require_label: bool = True) -> list[Video]:
    """Read and validate a manifest; relative video paths are resolved against its folder. A manifest
    without a single video is an error: every command reading one has nothing to do."""
    videos = read_rows(path, ["id", "path"] + ["label"] * require_label + ["split"] * require_split)
    if not videos:
        raise ManifestError(f"{path} has no videos")
    validate(videos, require_split=require_split, require_label=require_label, source=str(path))
    return videos


def read_rows(path: str | os.PathLike, required: Sequence[str] = ("id", "path", "label", "split")) -> list[Video]:
    """The rows of a manifest as videos, without `validate` (`check` reports its problems itself).
    `required`: the columns the header must have (an unlabelled manifest: just `id,path`).

    Captions and paths are read back through `csvcells.unguard` (the spreadsheet guard of
    `write_manifest`); cells may be of any length."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    base = path.resolve().parent
    try:
        records = csvcells.read_records(path, overflow="text")
    except csvcells.CsvError as exc:
        raise ManifestError(str(exc)) from None
    header = records[0][1] if records else []
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; the header must have {','.join(required)}")
    videos = []
    for first, cells in records[1:]:
        row = dict(zip(header, cells))
        try:
            start, end = _float_or_none(row.get("start")), _float_or_none(row.get("end"))
        except ValueError as exc:
            raise ManifestError(f"{path}, line {first}: bad start/end ({exc})") from None
        video_path = csvcells.unguard((row.get("path") or "").strip())
        if video_path and not os.path.isabs(video_path):
            video_path = str(base / video_path)
        videos.append(Video(
            id=(row.get("id") or "").strip(), path=video_path, label=(row.get("label") or "").strip(),
            split=(row.get("split") or "").strip(), start=start, end=end,
            text=csvcells.unguard(row.get("text")) or None, group=(row.get("group") or "").strip() or None,
        ))
    return videos


def write_manifest(path: str | os.PathLike, videos: Sequence[Video], unlabelled: bool = False) -> Path:
    """Write atomically; optional columns appear only when some video uses them (`unlabelled`:
    no label and split columns, a manifest of videos to predict).

    LF line ends; captions and paths go through `csvcells.guard` so that a spreadsheet never
    runs them as formulas (ids, labels, splits and groups are keys, written as they are)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    columns = ((["id", "path"] if unlabelled else ["id", "path", "label", "split"])
               + ["start", "end"] * any(v.start is not None or v.end is not None for v in videos)
               + ["text"] * any(v.text for v in videos) + ["group"] * any(v.group for v in videos))
    buf = io.StringIO()
    writer = csvcells.dict_writer(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for v in videos:
        row = dataclasses.asdict(v)
        p = Path(v.path)
        if p.is_absolute():
            try:
                row["path"] = p.resolve().relative_to(base).as_posix()
            except ValueError:
                row["path"] = str(p)
        for key in ("start", "end"):
            row[key] = "" if row[key] is None else f"{row[key]:.4f}"
        row["text"], row["group"] = row["text"] or "", row["group"] or ""
        writer.writerow(csvcells.guard_fields(row, FREE_TEXT))
    durable.atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
    return path


def validate(videos: Sequence[Video], require_split: bool = True, source: str = "manifest",
             require_label: bool = True) -> None:
    """Duplicate ids, empty ids or labels, unknown splits and bad clip bounds are errors naming their rows.

    An id holding a control character (NUL, tab, newline, DEL, C1 ...) is refused: such ids
    break the HDF5 cache and every line-based tool downstream. Clip bounds must be finite
    seconds, not negative, with end after start (FFmpeg would fail later with its own words).
    Row numbers count data rows from 1 (the CSV line number is one more, for the header).
    """
    problems = []
    seen: dict[str, int] = {}
    for row, v in enumerate(videos, start=1):
        if not v.id:
            problems.append(f"row {row}: empty id")
        elif any(unicodedata.category(c) == "Cc" for c in v.id):
            problems.append(f"row {row}: id {v.id!r} holds a control character; use printable text")
        elif v.id in seen:
            problems.append(f"row {row}: duplicate id {v.id!r} (first at row {seen[v.id]})")
        else:
            seen[v.id] = row
        if require_label and not v.label:
            problems.append(f"row {row} ({v.id!r}): empty label (training needs one; classify.predict does not)")
        if not v.path:
            problems.append(f"row {row} ({v.id!r}): empty path")
        if v.split and v.split not in SPLITS:
            problems.append(f"row {row} ({v.id!r}): split {v.split!r} is not one of {', '.join(SPLITS)}")
        elif require_split and not v.split:
            problems.append(f"row {row} ({v.id!r}): empty split")
        problems += [f"row {row} ({v.id!r}): {p}" for p in _clip_problems(v.start, v.end)]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ManifestError(f"{source}: {len(problems)} problem(s):\n  {shown}{more}")


def _clip_problems(start: float | None, end: float | None) -> list[str]:
    """What is wrong with a clip's bounds (seconds): non-finite, negative, or end not after start."""
    bad = [f"{name} {value} is not a finite number of seconds" for name, value in (("start", start), ("end", end))
           if value is not None and not math.isfinite(value)]
    if bad:
        return bad
    bad = [f"{name} {value} is negative" for name, value in (("start", start), ("end", end))
           if value is not None and value < 0]
    if not bad and end is not None and end <= (start or 0.0):
        bad.append(f"end {end} is not after start {start or 0.0}")
    return bad


# ----------------------------------------------------------------------------- splitting


def leaking_groups(videos: Sequence[Video]) -> dict[str, list[str]]:
    """Groups whose videos sit in more than one split: {group: splits in SPLITS order}.

    Such a group lets a classifier score on the test split by recognising the person, room or
    camera it saw in training, which is why the builders never make one."""
    return leaks_of((v.group, v.split) for v in videos)


def leaks_of(pairs: Iterable[tuple[str | None, str]]) -> dict[str, list[str]]:
    """`leaking_groups` over (group, split) pairs (videos without a group or split are skipped)."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for group, split in pairs:
        if group and split:
            splits_of[group].add(split)
    return {g: [s for s in SPLITS if s in found] for g, found in sorted(splits_of.items()) if len(found) > 1}


def describe_leaks(leaks: dict[str, list[str]], shown: int = 10) -> str:
    """One line naming the leaking groups (the first `shown` of them) and their splits."""
    names = ", ".join(f"{g!r} ({'/'.join(s)})" for g, s in list(leaks.items())[:shown])
    more = f" and {len(leaks) - shown} more" if len(leaks) > shown else ""
    return f"{len(leaks)} group(s) in two or more splits: {names}{more}"


def assign_splits(videos: Sequence[Video], seed: int = 0, pattern: Sequence[str] = ("train",) * 3 + ("val", "test")) -> list[Video]:
    """Keep splits the source already has; otherwise a seeded 60/20/20 split, by group if any.

    Without groups, as published: per class, round robin over the (here seeded-shuffled) list,
    3 of every 5 videos to train, 1 to val, 1 to test; a class too small to reach every split is
    an error. With a `group` column, whole groups are dealt out instead (`group_splits`), so no
    group is in two splits. Given splits that put a group in two splits are kept, with a warning
    naming the groups.
    """
    if all(v.split for v in videos):
        validate(videos)
        leaks = leaking_groups(videos)
        if leaks:
            log.warning("the given splits leak groups (a classifier may recognise them instead of the emotion): %s",
                        describe_leaks(leaks))
        return list(videos)
    if any(v.split for v in videos):
        partial = [v.id for v in videos if not v.split][:5]
        raise ManifestError(f"some videos have a split and some do not (e.g. {partial}); give all or none")
    if any(v.group for v in videos):
        return group_splits(videos, seed, pattern)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, v in enumerate(videos):
        by_class[v.label].append(i)
    too_small = {c: idx for c, idx in by_class.items() if len(idx) < len(pattern)}
    if too_small:
        lines = [f"class {c!r} has {len(idx)} video(s) (rows {[i + 1 for i in idx]}), at least {len(pattern)} are needed to fill train/val/test"
                 for c, idx in sorted(too_small.items())]
        raise ManifestError("cannot split:\n  " + "\n  ".join(lines))
    rng = random.Random(seed)
    split_of = {}
    for label in sorted(by_class):
        order = list(by_class[label])
        rng.shuffle(order)
        for k, i in enumerate(order):
            split_of[i] = pattern[k % len(pattern)]
    out = [dataclasses.replace(v, split=split_of[i]) for i, v in enumerate(videos)]
    validate(out)
    return out


def group_splits(videos: Sequence[Video], seed: int = 0, pattern: Sequence[str] = ("train",) * 3 + ("val", "test")) -> list[Video]:
    """Deal whole groups into `pattern`'s splits (3:1:1), classes as balanced as groups allow.

    scikit-learn's `StratifiedGroupKFold` (shuffled with `seed`) cuts the groups into
    len(pattern) folds whose class proportions stay close to the whole set's; fold k becomes
    split pattern[k]. A video without a group is a group of its own. A class that ends up absent
    from some split (too few groups) is a warning: with such groups no split can do better.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = [v.group or f"\0{v.id}" for v in videos]
    n_groups = len(set(groups))
    if n_groups < len(pattern):
        raise ManifestError(f"cannot split by group: {n_groups} group(s), at least {len(pattern)} are needed to fill "
                            f"train/val/test; give the splits in the manifest instead")
    labels = [v.label for v in videos]
    cv = StratifiedGroupKFold(n_splits=len(pattern), shuffle=True, random_state=seed)
    split_of = {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only n members": handled below
        for k, (_, fold) in enumerate(cv.split(videos, labels, groups)):
            for i in fold:
                split_of[int(i)] = pattern[k]
    out = [dataclasses.replace(v, split=split_of[i]) for i, v in enumerate(videos)]
    validate(out)
    present = {(v.label, v.split) for v in out}
    absent = [f"{c!r} in {s}" for c in class_names(out) for s in SPLITS if (c, s) not in present]
    if absent:
        log.warning("splitting by group left some class without videos in a split (too few groups): %s", ", ".join(absent))
    return out


# ----------------------------------------------------------------------------- builders


def _warn_missing(videos: Sequence[Video]) -> None:
    absent = [v for v in videos if not os.path.exists(v.path)]
    for v in absent[:10]:
        log.warning("video file not found for %r: %s (the stages will record it as failed)", v.id, v.path)
    if len(absent) > 10:
        log.warning("... and %d more missing video files", len(absent) - 10)


def group_pattern(regex: str | None) -> re.Pattern | None:
    """Compile a `--group-regex`; it must have a capture group (the group is its first one)."""
    if not regex:
        return None
    try:
        pattern = re.compile(regex)
    except re.error as exc:
        raise ManifestError(f"bad --group-regex {regex!r}: {exc}") from None
    if pattern.groups < 1:
        raise ManifestError(f"--group-regex {regex!r} has no capture group: put the group's part of the file name in (...)")
    return pattern


def group_from_name(pattern: re.Pattern | None, videos: list[Video]) -> list[Video]:
    """Set each video's group to the first capture group of `pattern` searched in its file name.

    A file name the pattern does not match (or whose first group is empty) is an error naming
    it: a video silently without a group would be a group of its own and could hide a leak."""
    if pattern is None:
        return videos
    out, unmatched = [], []
    for v in videos:
        m = pattern.search(Path(v.path).name)
        group = m.group(1) if m else None
        if not group:
            unmatched.append(Path(v.path).name)
        out.append(dataclasses.replace(v, group=group))
    if unmatched:
        raise ManifestError(f"--group-regex {pattern.pattern!r} finds no group in {len(unmatched)} file name(s), e.g. "
                            f"{unmatched[:5]}; fix the pattern (its first capture group is the group)")
    return out


def _found(folder: Path, root: Path, label: str, split: str) -> list[Video]:
    """The video files below `folder` (id: path below `root` without extension; `<video>.txt`: caption)."""
    videos = []
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS:
            cap = f.with_suffix(".txt")
            text = cap.read_text(encoding="utf-8-sig", errors="replace").strip() if cap.is_file() else None
            videos.append(Video(f.relative_to(root).with_suffix("").as_posix(), str(f.resolve()), label, split,
                                text=text or None))
    return videos


def from_folder(root: str | os.PathLike, group_regex: str | None = None) -> list[Video]:
    """One sub-folder per class (DMVER, Music-video): `ROOT/<class>/<video>`.

    `ROOT/<split>/<class>/<video>` (split in train/val/test) keeps the source's split. A
    `<video>.txt` beside a video is read as its caption. The id is the path below ROOT
    without its extension, which stays unique even when two classes hold the same file name.
    `group_regex`: the group of a video is the first capture group of this pattern searched in
    its file name (e.g. the publisher part of DMVER-style names).
    """
    pattern = group_pattern(group_regex)
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"not a folder: {root}")
    top = sorted(p for p in root.iterdir() if p.is_dir())
    split_layout = bool(top) and {p.name for p in top} <= set(SPLITS)
    groups = [(p.name, c) for p in top for c in sorted(q for q in p.iterdir() if q.is_dir())] if split_layout else [("", p) for p in top]
    videos = []
    for split, class_dir in groups:
        videos += _found(class_dir, root, class_dir.name, split)
    if not videos:
        raise ManifestError(f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) in class folders below {root}")
    return group_from_name(pattern, videos)


def from_tree(root: str | os.PathLike) -> list[Video]:
    """Every video file below ROOT at any depth, unlabelled (videos to predict); ids as `from_folder`'s."""
    videos = _found(Path(root), Path(root), "", "") if Path(root).is_dir() else []
    if not videos:
        raise ManifestError(f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) below {root}")
    validate(videos, require_split=False, require_label=False, source=str(root))
    return videos


def from_list(list_file: str | os.PathLike, root: str | os.PathLike | None = None,
              group_regex: str | None = None) -> list[Video]:
    """The published list files: one `path , label` line per video, labels -1/0/1.

    Relative paths are taken against `root` (default: the list file's folder). `group_regex`
    as for `from_folder`.
    """
    pattern = group_pattern(group_regex)
    list_file = Path(list_file)
    base = Path(root) if root else list_file.resolve().parent
    videos, problems = [], []
    for n, line in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        path, sep, label = line.rpartition(",")
        path, label = path.strip(), label.strip()
        if not sep or not path:
            problems.append(f"line {n}: expected 'path , label', got {line!r}")
            continue
        if label not in LIST_LABELS:
            problems.append(f"line {n}: label {label!r} is not one of -1, 0, 1")
            continue
        full = Path(path) if os.path.isabs(path) else base / path
        videos.append(Video(id=Path(path).with_suffix("").as_posix(), path=str(full), label=LIST_LABELS[label]))
    if problems:
        raise ManifestError(f"{list_file}: {len(problems)} bad line(s):\n  " + "\n  ".join(problems[:20]))
    return group_from_name(pattern, videos)


_EMO_LINE = re.compile(r"^\[(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\]\t(?P<utt>\S+)\t(?P<label>\w+)\t")


def _session(utterance: str, folder: Path) -> str:
    """`Ses01` from `Ses01F_impro01_F000`, else from the folder name `Session1`."""
    m = re.match(r"Ses(\d+)", utterance) or re.search(r"(\d+)$", folder.name)
    return f"Ses{int(m.group(1)):02d}" if m else folder.name


def from_iemocap(root: str | os.PathLike, merge_exc: bool = False, impro_only: bool = False,
                 classes: Sequence[str] = IEMOCAP_CLASSES) -> list[Video]:
    """Utterance clips of the IEMOCAP release: one row per labelled utterance.

    Each clip is `start..end` of its dialog video `SessionN/dialog/avi/DivX/<dialog>.avi`, as
    given by the summary lines of `SessionN/dialog/EmoEvaluation/<dialog>.txt`.
    `merge_exc` counts excitement as happiness; `impro_only` keeps improvised dialogs as the
    published baseline did. The group is the session (`Ses01`..`Ses05`): its two speakers
    appear in no other session, so session-wise splits are speaker-independent.
    """
    root = Path(root)
    sessions = sorted(p for p in root.glob("Session*") if p.is_dir())
    if not sessions:
        raise ManifestError(f"no Session* folders below {root}: expected the IEMOCAP_full_release tree")
    videos = []
    for session in sessions:
        for evaluation in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            dialog = evaluation.stem
            if impro_only and "impro" not in dialog:
                continue
            avi = session / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
            for line in evaluation.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _EMO_LINE.match(line)
                if not m:
                    continue
                label = m["label"]
                if merge_exc and label == "exc":
                    label = "hap"
                if label not in classes:
                    continue
                videos.append(Video(id=m["utt"], path=str(avi.resolve()), label=label,
                                    start=float(m["start"]), end=float(m["end"]), group=_session(m["utt"], session)))
    if not videos:
        raise ManifestError(f"no utterances with labels {list(classes)} found below {root}")
    return videos


# ----------------------------------------------------------------------------- check


EXIT_OK, EXIT_WARNINGS, EXIT_ERRORS = 0, 1, 2


def check(path: str | os.PathLike) -> tuple[str, int]:
    """The report of `python -m extract.manifest check M` and its exit code.

    Videos per class and split, groups per split, captions and missing files per split, groups
    leaking across splits, and `validate`'s problems (the same check every stage runs before it
    starts). Exit code: 0 nothing to report; 1 warnings (missing files, leaking groups, a class
    absent from a split): the stages run, but some videos fail or the numbers may be inflated;
    2 errors: the stages refuse this manifest. An unreadable manifest raises `ManifestError`.
    """
    videos = read_rows(path)
    errors = "" if videos else f"{path} has no videos"
    try:
        validate(videos, source=str(path))
    except ManifestError as exc:
        errors = str(exc)
    columns = list(SPLITS) + (["(other)"] if any(v.split not in SPLITS for v in videos) else [])

    def column(v: Video) -> str:
        return v.split if v.split in SPLITS else "(other)"

    counts: dict[tuple[str, str], int] = defaultdict(int)
    groups: dict[str, set[str]] = defaultdict(set)
    captions: dict[str, int] = defaultdict(int)
    missing: dict[str, list[str]] = defaultdict(list)
    for v in videos:
        col = column(v)
        counts[(v.label, col)] += 1
        if v.group:
            groups[col].add(v.group)
        if v.text and v.text.strip():
            captions[col] += 1
        if v.path and not os.path.exists(v.path):
            missing[col].append(v.id)
    per_split = {c: sum(n for (_, col), n in counts.items() if col == c) for c in columns}
    all_groups = set().union(*groups.values()) if groups else set()
    names = class_names(videos)
    lines = [f"manifest {path}: {len(videos)} videos, {len(names)} classes"
             + (f", {len(all_groups)} groups" if all_groups else ", no group column"), "",
             "| | " + " | ".join(columns) + " | total |", "|---|" + "---|" * (len(columns) + 1)]
    for c in names:
        row = [counts[(c, col)] for col in columns]
        lines.append(f"| {c or '(empty label)'} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    lines.append("| **videos** | " + " | ".join(str(per_split[c]) for c in columns) + f" | {len(videos)} |")
    if all_groups:
        lines.append("| groups | " + " | ".join(str(len(groups[c])) for c in columns) + f" | {len(all_groups)} |")
    lines.append("| captions | " + " | ".join(str(captions[c]) for c in columns) + f" | {sum(captions.values())} |")
    lines.append("| missing files | " + " | ".join(str(len(missing[c])) for c in columns)
                 + f" | {sum(len(m) for m in missing.values())} |")
    lines.append("")
    warnings = []
    leaks = leaking_groups(videos)
    if leaks:
        warnings.append(describe_leaks(leaks))
    absent = [f"{c!r} in {s}" for c in names if c for s in SPLITS if per_split.get(s) and not counts[(c, s)]]
    if absent:
        warnings.append("class without videos in a split: " + ", ".join(absent))
    n_missing = sum(len(m) for m in missing.values())
    if n_missing:
        first = [i for m in missing.values() for i in m][:5]
        warnings.append(f"{n_missing} video file(s) not found, e.g. {first} (each is that video's failure in the stages)")
    if not all_groups:
        lines.append("groups: none given (add a group column, e.g. with --group-regex, to check for leaks)")
    elif not leaks:
        lines.append("groups in two or more splits: none")
    lines += [f"warning: {w}" for w in warnings]
    if errors:
        lines.append(f"error: {errors}")
    code = EXIT_ERRORS if errors else EXIT_WARNINGS if warnings else EXIT_OK
    lines.append({EXIT_OK: "ok", EXIT_WARNINGS: "usable, with the warnings above (exit 1)",
                  EXIT_ERRORS: "the stages refuse this manifest (exit 2)"}[code])
    return "\n".join(lines) + "\n", code


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser("python -m extract.manifest", __doc__.split("\n\n")[0],
                        epilog="exit codes: 0 done; 2 the manifest cannot be made or read (one line 'error: ...'); "
                               "check: 0 ok, 1 warnings, 2 errors")
    sub = parser.add_subparsers(dest="source", required=True)
    p_folder = sub.add_parser("folder", help="one sub-folder per class (DMVER, Music-video)")
    p_folder.add_argument("root")
    p_folder.add_argument("--unlabelled", action="store_true", help="every video below ROOT, no label or split")
    p_list = sub.add_parser("list", help="published list file: 'path , label' lines, labels -1/0/1")
    p_list.add_argument("file")
    p_list.add_argument("--root", help="folder the list's relative paths start from (default: the list's folder)")
    p_iemocap = sub.add_parser("iemocap", help="IEMOCAP_full_release tree (group: the session)")
    p_iemocap.add_argument("root")
    p_iemocap.add_argument("--merge-exc", action="store_true", help="count 'exc' as 'hap'")
    p_iemocap.add_argument("--impro-only", action="store_true", help="improvised dialogs only, as published")
    p_check = sub.add_parser("check", help="report on a manifest: classes x splits, groups, leaks, missing files, "
                                           "captions; exit 0 ok, 1 warnings, 2 errors")
    p_check.add_argument("manifest")
    for p in (p_folder, p_list):
        p.add_argument("--group-regex", help="the group (publisher, speaker) is the first capture group of this "
                                             "regular expression searched in each file name, e.g. '^([^_]+)_'")
    for p in (p_folder, p_list, p_iemocap):
        p.add_argument("--out", required=True, help="manifest CSV to write")
        p.add_argument("--seed", type=int, default=0, help="seed of the 60/20/20 split (default 0)")
    args = parser.parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose)


def _main(args) -> int:
    if args.source == "check":
        report, code = check(args.manifest)
        print(report, end="")
        return code
    if args.source == "folder" and args.unlabelled:  # videos to predict: no label, no split
        videos = from_tree(args.root)
        print(f"wrote {write_manifest(args.out, videos, unlabelled=True)}: {len(videos)} unlabelled videos")
        return 0
    if args.source == "folder":
        videos = from_folder(args.root, args.group_regex)
    elif args.source == "list":
        videos = from_list(args.file, args.root, args.group_regex)
    else:
        videos = from_iemocap(args.root, merge_exc=args.merge_exc, impro_only=args.impro_only)
    validate(videos, require_split=False, source=args.source)
    videos = assign_splits(videos, seed=args.seed)
    _warn_missing(videos)
    write_manifest(args.out, videos)
    counts = Counter((v.label, v.split) for v in videos)
    summary = ", ".join(f"{c}: {sum(counts[(c, s)] for s in SPLITS)} ({'/'.join(str(counts[(c, s)]) for s in SPLITS)})"
                        for c in class_names(videos))
    groups = len({v.group for v in videos if v.group})
    print(f"wrote {args.out}: {len(videos)} videos{f' in {groups} groups' if groups else ''}; per class "
          f"(train/val/test) {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
