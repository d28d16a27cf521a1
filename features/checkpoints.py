"""The one strict checkpoint loader shared by every frozen backbone (I3D, VGGish, ResNet-18).

    state = read_state_dict(path)            # torch.load(path, map_location="cpu", weights_only=True)
    load_strict(model, path)                 # read + compare keys and shapes + load_state_dict

Strict means: every key the model has must be in the file with exactly the model's shape, and
the file may hold no key the model lacks. Two deliberate, documented allowances:

* `*.num_batches_tracked` (BatchNorm counters) may be missing: files saved by old PyTorch
  releases (the public I3D conversion among them) carry none. A missing counter keeps the
  model's own value; it plays no part in an eval-mode forward.
* `optional_prefixes`: keys a caller declares optional (ResNet-18's `fc.*` head, which the
  512-d feature extractor never uses) may be missing; when present they are checked and loaded.

Any problem raises `CheckpointError`, whose message names the file and lists the missing,
unexpected and mis-shaped keys (the first few of each, with counts). A missing file, a damaged
file or a file that is not a PyTorch state dict also raises `CheckpointError` naming the file.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable

import torch

SHOW = 5  # how many keys of each kind an error message lists


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, or does not match the model's layout."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """git's blob id of a file, what `git hash-object` prints: SHA-1 of b"blob <size>\\0" + the
    bytes. A repository's tree records it for every file, so a file published in a git repository
    can be checked against the tree without a separately published checksum."""
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _numpy_globals() -> list:
    """Data-only numpy globals that a pickled ndarray needs, under numpy 1 and numpy 2 names.

    Some converted checkpoints store numpy arrays instead of tensors (a PCA parameter file may);
    allowing exactly these keeps `weights_only=True` (no arbitrary code) and still reads them."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed: list = [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a plain `{name: tensor}` state dict on the CPU, without executing pickled code.

    `torch.load(path, map_location="cpu", weights_only=True)`; numpy array values (see
    `_numpy_globals`) are accepted and turned into tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged zip, truncated pickle, random bytes, disallowed globals ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path}: cannot be read as a PyTorch state dict "
            f"(damaged or not a torch file?): {type(exc).__name__}: {first[:300]}"
        ) from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"checkpoint {path}: holds a {type(state).__name__}, not a state dict of tensors"
        )
    import numpy as np

    state = {k: torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: {len(bad)} entries are not tensors under string keys, "
            f"e.g. {', '.join(bad[:SHOW])}"
        )
    return dict(state)


def _listing(title: str, items: list[str]) -> str:
    more = f", ... ({len(items) - SHOW} more)" if len(items) > SHOW else ""
    return f"{len(items)} {title}: {', '.join(items[:SHOW])}{more}"


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def check_state_dict(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str | os.PathLike,
    optional_prefixes: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """Compare `state` with `model.state_dict()`; return a complete dict ready for a strict load.

    Raises `CheckpointError` naming `source` when a required key is missing, a key is unexpected,
    a shape differs or a value is NaN or infinite (such a file would load "strictly" and then
    poison every feature). Allowed-missing keys (`num_batches_tracked`, `optional_prefixes`) are
    filled in from the model's current values.
    """
    expected = model.state_dict()
    optional_prefixes = tuple(optional_prefixes)

    def optional(key: str) -> bool:
        return key.endswith("num_batches_tracked") or key.startswith(optional_prefixes)

    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} (file {_shape(state[k])}, model {_shape(expected[k])})"
        for k in expected
        if k in state and _shape(state[k]) != _shape(expected[k])
    ]
    if missing or unexpected or misshaped:
        parts = [
            _listing(title, items)
            for title, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("mis-shaped keys", misshaped),
            )
            if items
        ]
        raise CheckpointError(
            f"checkpoint {source} does not match {type(model).__name__} "
            f"({len(state)} keys in file, {len(expected)} in model): " + "; ".join(parts)
        )
    nonfinite = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if nonfinite:
        raise CheckpointError(f"checkpoint {source} holds NaN or infinite values (damaged file?): "
                              + _listing("keys", nonfinite))
    full = dict(expected)
    full.update(state)
    return full


def load_strict(
    model: torch.nn.Module,
    path: str | os.PathLike,
    optional_prefixes: Iterable[str] = (),
    state: Mapping[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Strictly load the file at `path` (or the already-read `state` from it) into `model`."""
    if state is None:
        state = read_state_dict(path)
    full = check_state_dict(model, state, path, optional_prefixes)
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as exc:  # dtype that cannot be copied, etc.
        raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    return model
