"""How the project's CSV files are written and read, so that spreadsheets open them safely.

Users open manifests, `failures.csv`, `warnings.csv` and `predictions.csv` in spreadsheet
programs, which run a cell starting with `=`, `+`, `-` or `@` (or a tab or carriage return
before one) as a formula: a caption `=HYPERLINK("http://...")` becomes a live link, `-2+3`
becomes 1. The policy, in one place:

* **Free text** (captions, video paths, failure reasons, warnings, a prediction's `missing`
  reasons) is written through `guard`: a cell that starts with one of `= + - @ TAB CR` gets one
  leading apostrophe, which spreadsheets treat as "this is text" and do not show.
* **Keys** (id, label, split, group, class names) are written as they are, so that they
  match the same keys in other files and tools byte for byte. Numbers are written by us.
* Reading free text back goes through `unguard`, which removes exactly the apostrophe `guard`
  added, so write-then-read gives the original text for every string. To make that exact, a
  text that itself starts with apostrophes followed by a trigger character (`'=x`) gets one
  more on write (`''=x`), and the reader always removes one. The one cost: a hand-written
  manifest whose caption really starts with `'=` loses that apostrophe.

Every writer ends lines with LF, not the csv module's default CRLF: write through `writer` or
`dict_writer`. (Not `lineterminator="\n"`: with it, Python 3.11's csv leaves a cell holding a
lone carriage return unquoted, and the file reads back as two rows.) `read_records`
reads a UTF-8 file (with or without a BOM) whatever the length of its cells, and names the file
and line of bytes that are not UTF-8.
"""
from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import sys
from pathlib import Path
from typing import Iterable, Mapping

log = logging.getLogger(__name__)

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def needs_guard(text: str) -> bool:
    """Whether a spreadsheet could read `text` as a formula, or `unguard` would change it."""
    return text.lstrip("'")[:1] in TRIGGERS


def guard(text: str | None) -> str:
    """The cell to write for free text: one apostrophe in front when `needs_guard`."""
    if not text:
        return ""
    return "'" + text if needs_guard(text) else text


def unguard(text: str | None) -> str | None:
    """The free text a cell written by `guard` holds (the inverse of `guard`)."""
    if text and text.startswith("'") and needs_guard(text[1:]):
        return text[1:]
    return text


class _LineFeed:
    """A text file whose csv rows end with LF: the csv writer hands over one whole row per
    `write`, ending with its CRLF terminator, which becomes LF (cells stay quoted as for CRLF)."""

    def __init__(self, f):
        self._f = f

    def write(self, row: str):
        return self._f.write(row[:-2] + "\n" if row.endswith("\r\n") else row)


def writer(f):
    """`csv.writer(f)` whose rows end with LF."""
    return csv.writer(_LineFeed(f))


def dict_writer(f, fieldnames, **kwargs) -> csv.DictWriter:
    """`csv.DictWriter(f, fieldnames, ...)` whose rows end with LF."""
    return csv.DictWriter(_LineFeed(f), fieldnames, **kwargs)


def guard_fields(row: Mapping, free: Iterable[str]) -> dict:
    """A copy of `row` with its free-text columns `free` guarded (keys are left alone)."""
    out = dict(row)
    for name in free:
        if isinstance(out.get(name), str):
            out[name] = guard(out[name])
    return out


def unguard_fields(row: Mapping, free: Iterable[str]) -> dict:
    """A copy of `row` with its free-text columns `free` read back (see `unguard`)."""
    out = dict(row)
    for name in free:
        if isinstance(out.get(name), str):
            out[name] = unguard(out[name])
    return out


def raise_field_limit() -> None:
    """Let the csv module read cells of any length (its default stops at 128 KiB, so one long
    caption would make a whole manifest unreadable). `sys.maxsize` overflows the C long of
    some platforms; halve until it fits."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


class CsvError(ValueError):
    """A CSV file that cannot be read as text; the message names the file and the line."""


def read_records(path: str | os.PathLike, overflow: str | None = None) -> list[tuple[int, list[str]]]:
    """Every non-blank record of a UTF-8 CSV file with the line it starts on, header included.

    A record with more cells than the header usually holds a free-text cell with unquoted
    commas: with `overflow` (that column's name) its pieces are joined back with commas and a
    warning names the line; without it, or without that column, it is an error naming the line."""
    data = Path(path).read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CsvError(f"{path}, line {line}, column {column}: byte 0x{data[exc.start]:02x} is not UTF-8; "
                       f"save the file as UTF-8") from None
    raise_field_limit()
    reader = csv.reader(io.StringIO(text, newline=""))
    records, line = [], 1
    for cells in reader:
        if cells:
            records.append((line, _fold(path, records[0][1] if records else cells, cells, line, overflow)))
        line = reader.line_num + 1
    return records


def _fold(path, header: list[str], cells: list[str], line: int, overflow: str | None) -> list[str]:
    extra = len(cells) - len(header)
    if extra <= 0:
        return cells
    if overflow not in header:
        raise CsvError(f"{path}, line {line}: {len(cells)} cells for {len(header)} columns; quote a cell holding a comma")
    i = header.index(overflow)
    joined = ",".join(cells[i:i + extra + 1])
    log.warning("%s, line %d: %d cells for %d columns; took the %s cell to hold unquoted commas: %r",
                path, line, len(cells), len(header), overflow, joined[:80])
    return cells[:i] + [joined] + cells[i + extra + 1:]
