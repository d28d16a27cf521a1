"""A stage's lists of failed videos and of warnings: `W/<stage>/failures.csv` and `warnings.csv`.

A video that fails gets a row (id, path, stage, reason) in failures.csv and never stops the
others; later stages skip the videos that failed upstream and say so. A video processed with a
problem that did not stop it (decoded and declared lengths disagree) gets a row (id, path,
stage, warning) in warnings.csv. Both are rewritten whole at the end of each run.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Sequence

from extract import csvcells, durable
from extract.layout import Work, as_work

FAILURE_COLUMNS = ("id", "path", "stage", "reason")
WARNING_COLUMNS = ("id", "path", "stage", "warning")
FREE_TEXT = ("path", "reason", "warning")  # guarded against spreadsheet formulas (extract.csvcells)


def read_failures(work: str | os.PathLike | Work, stage: str) -> dict[str, str]:
    """id -> reason for the videos that failed in `stage`'s last run (empty if it never ran)."""
    path = as_work(work).failures(stage)
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["id"]: csvcells.unguard(row["reason"]) for row in csv.DictReader(f)}


def read_warnings(work: str | os.PathLike | Work, stage: str) -> list[dict]:
    """The rows of `W/<stage>/warnings.csv` (id, path, stage, warning); empty if there is none."""
    path = as_work(work).warnings(stage)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [csvcells.unguard_fields(row, FREE_TEXT) for row in csv.DictReader(f)]


def write_failures(work: str | os.PathLike | Work, stage: str, rows: Sequence[dict]) -> None:
    """failures.csv of this run (written even when empty: the last run's list is what counts)."""
    _write(as_work(work).failures(stage), rows, FAILURE_COLUMNS)


def write_warnings(work: str | os.PathLike | Work, stage: str, rows: Sequence[dict]) -> None:
    """warnings.csv, written only when there are rows or an earlier file to replace."""
    path = as_work(work).warnings(stage)
    if rows or path.exists():
        _write(path, rows, WARNING_COLUMNS)


def _write(path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    buf = io.StringIO()
    writer = csvcells.dict_writer(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(csvcells.guard_fields(row, FREE_TEXT) for row in rows)
    durable.atomic_write_bytes(path, buf.getvalue().encode("utf-8"), sync_dir=True)
