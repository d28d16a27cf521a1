"""Claiming a folder for the settings its files are made with.

A stage run (and the feature stage's shard writer) claims its output folder for its settings
under an exclusive `flock` of `<folder>/settings.lock`, records them in `settings.json` (once,
durably) and holds a shared lock until it ends. Another run with other settings is refused with
one line naming each difference; runs with the same settings share the folder. Every file is
published inside `hold_claim`, which checks that the folder is still claimed with the settings
the file was made with: a file never lands in a folder claimed for other settings, even from a
worker of a run whose folder was deleted and re-claimed meanwhile.

The lock is an `flock`, released by the kernel when its process dies (SIGKILL included), so a
killed run never blocks the next one. On a network file system flock must be supported.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from extract import cli, durable

SETTINGS_FILE, LOCK_FILE = "settings.json", "settings.lock"
# Settings that change how a stage runs, not what it writes: free to differ between runs.
RUNTIME_SETTINGS = ("timeout", "batch_pairs", "batch_videos", "weights")


class SettingsMismatch(cli.UserError):
    """The folder holds outputs made with other settings; mixing them would mislabel numbers."""


class ClaimLost(RuntimeError):
    """The folder is no longer claimed with the settings this output was made with: it is discarded."""


def output_settings(settings: Any) -> dict:
    """The settings a stage's outputs are made with, as its settings.json records them: the
    dataclass as JSON, the runtime-only fields (`RUNTIME_SETTINGS`) left out."""
    recorded = json.loads(json.dumps(dataclasses.asdict(settings), default=str))
    return {k: v for k, v in recorded.items() if k not in RUNTIME_SETTINGS}


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


def _as_json(settings: dict) -> dict:
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


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

    * Claiming takes an exclusive `flock` on the lock file (without waiting when other runs
      hold the folder), compares with or writes `folder/settings_file`, then holds a **shared**
      lock until the block ends. A run that finds other runs holding it takes the shared lock
      (waiting only while another run is claiming) and compares.
    * Settings that differ (keys in `ignore` excepted, e.g. runtime-only ones) raise
      `SettingsMismatch` with a one-line message naming each difference. Equal settings share
      the folder: concurrent runs may write different or the same items.
    * `Claim.alone` is True when no other run held the folder: only then may the caller delete
      files that it cannot prove dead (temporaries of other hosts, old-style names).
    * Whoever publishes an item file into the folder does so inside `hold_claim(folder,
      settings)`; a new claim waits for such a publication to finish.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = _as_json(settings)
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
    wanted = _as_json(settings)
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


_LEGACY_TMP = re.compile(r"^\..+\.\d+\.tmp$")  # `.<name>.<pid>.tmp`, as versions before 0.2 wrote


def remove_stale_temporaries(folder: str | os.PathLike, alone: bool = False) -> int:
    """Delete the temporary files in `folder` whose owner process is dead (`durable.remove_dead_temps`).

    With `alone` (the caller holds the folder's claim exclusively, so no live run and no worker
    of one can be writing there) temporaries of other hosts and old-style names go too."""
    if not alone:
        return durable.remove_dead_temps(folder)
    return durable.remove_dead_temps(folder, extra=lambda name: name.startswith(durable.TMP_PREFIX)
                                     or bool(_LEGACY_TMP.match(name)))
