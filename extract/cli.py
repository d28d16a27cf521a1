"""What every command shares: exit codes, one logging setup, and one wrapper around `main`.

Exit codes of every command (the docs' "Exit codes" page repeats them):

    0    done
    1    some videos failed; the rest are done (a stage's failures.csv names them)
    2    nothing ran, or the run itself failed: one line `error: ...` on stderr,
         the traceback only with --verbose
    3    every video failed (a stage, the feature stage): nothing usable came out, which
         usually means a setting or the installation is wrong, not the videos; the Makefile
         carries on past 1 only, so make stops on 3
    130  interrupted (Ctrl-C); run the same command again to resume

A command's `main(argv)` parses its arguments and hands the work to `run(body, verbose)`:

    def main(argv=None) -> int:
        args = parser().parse_args(argv)
        return cli.run(lambda: _main(args), verbose=args.verbose)
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
import traceback
from typing import Callable

EXIT_OK, EXIT_SOME_FAILED, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_ALL_FAILED = 3
EXIT_USAGE = EXIT_RUN_FAILED  # nothing ran: the same code as a failed run (make stops on both)
EPILOG = ("exit codes: 0 done; 1 some videos failed, the rest are done; 2 nothing ran, or the run itself failed "
          "(one line 'error: ...'); 3 every video failed; 130 interrupted")
INTERRUPTED = "interrupted; run the same command again to resume"


def _quiet_interrupt(kind, value, tb, _plain=sys.excepthook) -> None:
    """A Ctrl-C that comes before `run` (while a command still imports torch or cv2) is one
    line and exit 130 too, not the traceback of whatever import it stopped."""
    if issubclass(kind, KeyboardInterrupt):
        print(INTERRUPTED, file=sys.stderr, flush=True)
        os._exit(EXIT_INTERRUPTED)
    _plain(kind, value, tb)


sys.excepthook = _quiet_interrupt


class UserError(Exception):
    """A failure whose message is complete for a user (a bad manifest, clashing settings, ...):
    printed as it is, without the exception's type or a hint about --verbose."""


class _Format(logging.Formatter):
    """Plain messages; warnings and errors carry their level so they stand out in a long log."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes, not the one at setup: a command
    run in-process (a test capturing its output, a notebook) gets its lines where it looks."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbose: bool = False, level: int = logging.INFO) -> None:
    """The one logging setup: `level` (INFO by default; DEBUG with --verbose) to stderr.

    Libraries' chatter (dask's per-worker INFO lines, urllib3, ...) is held to warnings unless
    --verbose, so that a command prints its own summary line and little else. Calling it again
    replaces its own handler; handlers that others installed (pytest's caplog) stay."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _Stderr):
            root.removeHandler(h)
    handler = _Stderr()
    handler.setFormatter(_Format("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else level)
    quiet_libraries(verbose)


def quiet_libraries(verbose: bool | None = None) -> None:
    """Hold libraries' loggers to warnings (INFO with `verbose`; None: verbose when the root
    logger is at DEBUG). Called again after importing `distributed`, whose import sets its
    own loggers back to INFO."""
    if verbose is None:
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    for noisy in ("distributed", "dask", "bokeh", "tornado", "urllib3", "h5py", "matplotlib", "PIL",
                  "sentence_transformers", "transformers", "filelock", "fsspec", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true", help="more detail, and the traceback of a failed run")


def parser(prog: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """An argument parser with the exit codes in its help and `--verbose`."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=kwargs.pop("epilog", EPILOG),
                                formatter_class=kwargs.pop("formatter_class", argparse.ArgumentDefaultsHelpFormatter),
                                **kwargs)
    add_verbose(p)
    return p


def one_line(exc: BaseException) -> str:
    """The one line a user reads for a failure of the run itself."""
    if isinstance(exc, UserError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        text = f"disk full: {exc}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def run_failed(exc: BaseException, verbose: bool = False, stream=None) -> int:
    """Report a failure of the run itself: one line `error: ...` (the traceback first with
    `verbose`); returns `EXIT_RUN_FAILED`, so that exit 1 keeps meaning "some videos failed"."""
    stream = stream if stream is not None else sys.stderr
    if verbose:
        traceback.print_exception(exc, file=stream)
    hint = "" if verbose or isinstance(exc, UserError) else " (--verbose for the traceback)"
    print(f"error: {one_line(exc)}{hint}", file=stream)
    return EXIT_RUN_FAILED


def interrupted(stream=None) -> int:
    print(INTERRUPTED, file=stream if stream is not None else sys.stderr)
    return EXIT_INTERRUPTED


def run(body: Callable[[], int | None], verbose: bool = False, level: int = logging.INFO) -> int:
    """Set up logging, call `body()` and turn what it raises into an exit code and one line."""
    setup_logging(verbose, level)
    try:
        code = body()
    except KeyboardInterrupt:
        return _final(interrupted())
    except Exception as exc:  # the run itself failed, not one video: never exit 1
        return _final(run_failed(exc, verbose))
    return _final(EXIT_OK if code is None else int(code))


def _final(code: int) -> int:
    """From here on the result is decided and everything is written: a Ctrl-C while the interpreter
    shuts down (joining worker pools can take a second) ends the process at once with that code,
    instead of a KeyboardInterrupt traceback from an exit handler."""
    def leave(signum, frame) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    if _is_the_program() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, leave)
    return code


def _is_the_program() -> bool:
    """Whether this process is one of our commands (`python -m extract.frames`, `dmver ...`), not a
    program that calls a `main` in-process (a test runner, a notebook), whose Ctrl-C stays its own."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None:
        return spec.name.split(".")[0] in ("extract", "features", "classify", "benchmarks")
    return os.path.basename(sys.argv[0] if sys.argv else "") == "dmver"
