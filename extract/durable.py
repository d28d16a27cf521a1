"""Durable atomic file writes and the clean-up of temporaries, shared by extract/, features/ and classify/.

Every file the toolkit publishes is written under a temporary name in the folder it belongs to,
flushed and `os.fsync`ed, then renamed into place with `os.replace`; for files that a later run
reads to decide what to do (settings, caches) the folder is fsync'ed after the rename as well.
So a file under its real name is complete even after a SIGKILL (the rename is atomic) and after a
power loss (its data reached the disk before the rename did; the folder's entry after it).

Temporary names are `.tmp-<pid>-h<host>-<random>-<name>`: the writing process and host are in
the name, so `remove_dead_temps` deletes only what a dead process left and never the file another
live process is still writing. (`.tmp-<pid>-<random>-<name>`, as older versions of the feature
cache wrote, is read as a local process's.)

This module imports nothing from the rest of the project: `extract` and `features` both use it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

TMP_PREFIX = ".tmp-"
_TMP_NAME = re.compile(r"^\.tmp-(\d+)-(?:h([0-9a-f]{6})-)?")


@functools.lru_cache(maxsize=1)
def host_tag() -> str:
    """Six hex digits naming this host, so temporaries on a shared folder say whose they are."""
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def temp_path(target: str | os.PathLike) -> Path:
    """A fresh temporary name beside `target`, owned by this process."""
    target = Path(target)
    return target.with_name(f"{TMP_PREFIX}{os.getpid()}-h{host_tag()}-{secrets.token_hex(4)}-{target.name}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def temp_owner(name: str) -> tuple[int, str] | None:
    """(pid, host tag) of a temporary file name written by `temp_path`, or None if it is not one."""
    m = _TMP_NAME.match(name)
    if not m:
        return None
    return int(m[1]), m[2] or host_tag()


def owner_dead(name: str) -> bool:
    """True when `name` is one of our temporaries and the process that writes it has ended.

    A temporary of another host is never judged dead here: its process cannot be seen."""
    owner = temp_owner(name)
    if owner is None:
        return False
    pid, host = owner
    return host == host_tag() and not pid_alive(pid)


def remove_dead_temps(folder: str | os.PathLike, extra: Callable[[str], bool] | None = None) -> int:
    """Delete the temporaries (files or folders) in `folder` whose owner process is dead.

    `extra(name)` may name more entries to delete (a caller that knows no run can own them).
    Returns how many entries were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in os.scandir(folder):
        if not (owner_dead(entry.name) or (extra is not None and extra(entry.name))):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the file's own fsync still happened
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """fsync a file written by someone else (a library that closed it): reopen it and sync."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under `folder` (deepest first), then `folder` itself."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


def publish(tmp: str | os.PathLike, target: str | os.PathLike, sync_dir: bool = False) -> Path:
    """Rename a complete, already fsync'ed temporary into place; with `sync_dir`, fsync the folder.

    The one place in the project that renames a file or folder over its published name."""
    os.replace(tmp, target)
    if sync_dir:
        fsync_dir(Path(target).parent)
    return Path(target)


@contextlib.contextmanager
def open_temp(target: str | os.PathLike, sync: bool = True) -> Iterator[tuple[Any, Path]]:
    """`(file, temp path)` open for binary writing beside `target`; flushed and fsync'ed on exit.

    The caller renames it (`publish`) when it wants the file to appear; on an exception the
    temporary is removed. `sync=False` skips the fsync: only for files whose loss or emptiness
    after a power loss a reader detects and repairs by itself (see `atomic_write`)."""
    tmp = temp_path(target)
    try:
        with open(tmp, "wb") as f:
            yield f, tmp
            f.flush()
            if sync:
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(target: str | os.PathLike, write: Callable[[Any], None], sync_dir: bool = False,
                 sync: bool = True) -> Path:
    """Call `write(file_object)` on a temporary file beside `target`, fsync it, rename it into place.

    With `sync_dir` the folder is fsync'ed after the rename too, so that after a power loss the
    file is there under its name, not only intact if it is there. `sync=False` (no fsync at
    all) is for files whose every reader treats an empty, unparsable or missing file as absent
    and remakes it, such as the stages' provenance records: there an fsync buys nothing."""
    target = Path(target)
    with open_temp(target, sync) as (f, tmp):
        write(f)
    try:
        return publish(tmp, target, sync_dir)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes, sync_dir: bool = False, sync: bool = True) -> Path:
    return atomic_write(target, lambda f: f.write(data), sync_dir=sync_dir, sync=sync)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a fresh temporary folder beside `final`; on success it replaces `final` whole.

    A process killed inside the block leaves `final` as it was (plus a `.tmp-*` folder that the
    next publication beside it removes); a reader never sees a half-written folder. Before the
    rename every file in the folder is fsync'ed, and the parent folder after it, so a power loss
    leaves the old folder or the complete new one. Callers decide first whether `final` may be
    replaced: this function replaces whatever is there.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temps(final.parent)
    tmp = temp_path(final)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if final.exists():
            old = publish(final, temp_path(final.with_name(f"old-{final.name}")))
        publish(tmp, final, sync_dir=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
