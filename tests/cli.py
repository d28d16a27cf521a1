"""Running the project's commands in a subprocess, as a user would: `python -m <module> ...` from the
repository root, with this checkout first on PYTHONPATH (so a test never runs another install's code).

`run_cli` runs a command to the end and returns its exit code and output; `start_cli` starts one
and returns the process, for the tests that kill or race commands; `cli_command` is the argv both use.
`quiet` calls a command's `main` in this process instead, with its output captured.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

ROOT = Path(__file__).resolve().parents[1]


def cli_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's environment) with the repository first on PYTHONPATH."""
    out = dict(os.environ if env is None else env)
    rest = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), *rest])
    return out


def cli_command(module: str, *args: object) -> list[str]:
    """The argv of `python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]


def run_cli(module: str, *args: object, env: Mapping[str, str] | None = None, check: bool = False,
            timeout: float | None = 600, input: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args...` in the repository root; `.returncode`, `.stdout`, `.stderr` (text).

    check=True fails the test on a non-zero exit, showing the ends of both outputs."""
    done = subprocess.run(cli_command(module, *args), cwd=ROOT, env=cli_env(env), capture_output=True, text=True,
                          timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"python -m {module} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
                             f"\n--- stderr\n{done.stderr[-3000:]}")
    return done


def start_cli(module: str, *args: object, env: Mapping[str, str] | None = None, capture: bool = False,
              **popen) -> subprocess.Popen:
    """Start `python -m module args...` in the repository root; output discarded unless capture=True
    (then text pipes)."""
    if capture:
        popen.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    else:
        popen.setdefault("stdout", subprocess.DEVNULL)
        popen.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(cli_command(module, *args), cwd=ROOT, env=cli_env(env), **popen)


def quiet(main, argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `main(argv)` called in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()
