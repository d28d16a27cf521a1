"""A model bundle on disk: data only (JSON and numpy arrays), hashed, checked whole before use.

A bundle is a file people pass around, so reading one must not run code from it: nothing in it is
a pickle. Heads and the fusion are stored as a JSON description (`heads.head_state`,
`fuse.Fusion.state`) plus an `.npz` of plain numeric arrays read with `allow_pickle=False`; a
joint rule's single head likewise (`joint_state.joint_state`: its network's tensors by name).

    bundle.json      format, settings, class names, heads and fusion descriptions, and `files`:
                     every other file of the bundle with its SHA-256
    bundle.sha256    the SHA-256 of bundle.json's bytes
    .dmver-bundle    the marker that lets `classify.export --out` replace a previous bundle

The hashes detect a damaged or edited bundle (a truncated file, a hand-edited setting); they are
not a signature: whoever rewrites a file and every hash makes a bundle that passes. Even then the
worst such a bundle can do is give wrong predictions, since it holds no code.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path, PurePosixPath

import numpy as np

BUNDLE_FORMAT = 2
BUNDLE_FILE, DIGEST_FILE, BUNDLE_MARKER = "bundle.json", "bundle.sha256", ".dmver-bundle"
# What a bundle folder of format 1 held (such a folder may still be replaced by an export).
LEGACY_BUNDLE = frozenset({BUNDLE_FILE, "card.md", "card.json", "heads", "fusion.joblib"})


class BundleError(ValueError):
    """The bundle is damaged, edited, of another format or inconsistent; the message names the file."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def npz_bytes(arrays: dict) -> bytes:
    """Plain numeric arrays as an uncompressed .npz (object arrays refused: they would need pickle)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise TypeError(f"array {k!r} holds Python objects; a bundle stores numbers only")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one named error
        raise BundleError(f"{path}: not a plain numeric .npz ({exc})") from None


def write(folder: Path, bundle: dict, files: dict[str, bytes]) -> None:
    """Write `files` (relative path -> bytes) and bundle.json listing their hashes, then its digest."""
    listed = {}
    for rel, data in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        listed[rel] = sha256_bytes(data)
    text = (json.dumps({**bundle, "files": listed}, indent=2, sort_keys=True) + "\n").encode("utf-8")
    (folder / BUNDLE_FILE).write_bytes(text)
    (folder / DIGEST_FILE).write_text(f"{sha256_bytes(text)}  {BUNDLE_FILE}\n", encoding="utf-8")
    (folder / BUNDLE_MARKER).write_text(json.dumps({"kind": "dmver-bundle", "format": BUNDLE_FORMAT}) + "\n",
                                        encoding="utf-8")


def inside(folder: Path, rel) -> Path:
    """`folder/rel`, refused unless `rel` is a relative path that stays inside `folder`."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{folder / BUNDLE_FILE}: file name {rel!r} is not a relative path")
    parts = PurePosixPath(rel.replace("\\", "/"))
    if parts.is_absolute() or ".." in parts.parts or os.path.isabs(rel) or ":" in rel:
        raise BundleError(f"{folder / BUNDLE_FILE}: file {rel!r} points outside the bundle")
    path = (folder / rel).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise BundleError(f"{folder / BUNDLE_FILE}: file {rel!r} resolves outside the bundle ({path})")
    return path


@dataclasses.dataclass
class Loaded:
    """A checked bundle: its description, one head per modality and the fusion."""
    folder: Path
    bundle: dict
    heads: dict
    fusion: object
    joint: object = None  # a joint rule's one head (`classify.joint`), in place of heads and fusion


def _read_json(folder: Path) -> dict:
    path, digest = folder / BUNDLE_FILE, folder / DIGEST_FILE
    if not path.is_file():
        raise BundleError(f"{folder} is not a model bundle (no {BUNDLE_FILE}); make one with classify.export")
    data = path.read_bytes()
    if not digest.is_file():
        try:
            old = json.loads(data).get("format")
        except (ValueError, AttributeError):
            old = None
        if old == 1:
            raise BundleError(f"{folder}: a format-1 bundle stores pickled heads, which this version refuses to "
                              f"load (they can run code); export the model again with classify.export")
        raise BundleError(f"{digest} is missing: {folder} is not a complete bundle; export it again")
    recorded = digest.read_text(encoding="utf-8", errors="replace").split()[:1]
    if recorded != [sha256_bytes(data)]:
        raise BundleError(f"{path} was edited or damaged: its SHA-256 differs from the one in {digest}")
    try:
        bundle = json.loads(data)
    except ValueError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(bundle, dict):
        raise BundleError(f"{path}: not a JSON object")
    if bundle.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: bundle format {bundle.get('format')!r}, this version reads {BUNDLE_FORMAT}; "
                          f"export the model again with classify.export")
    return bundle


def _check_files(folder: Path, bundle: dict) -> None:
    path = folder / BUNDLE_FILE
    files = bundle.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path}: no 'files' list of hashes")
    for rel, digest in files.items():
        target = inside(folder, rel)
        if not target.is_file():
            raise BundleError(f"{target}: listed in {path} but missing")
        if sha256_bytes(target.read_bytes()) != digest:
            raise BundleError(f"{target} was edited or damaged: its SHA-256 differs from the one in {path}")


def _arrays(folder: Path, bundle: dict, rel, what: str) -> dict:
    if rel not in bundle["files"]:
        raise BundleError(f"{folder / BUNDLE_FILE}: {what} file {rel!r} is not among the hashed files")
    return read_npz(inside(folder, rel))


def load(folder) -> Loaded:
    """Check everything, in order, before any compute: bundle.json's digest, its JSON and format,
    every listed file's path and hash, then build the heads and fusion from their arrays and
    check their class counts against `class_names`. Raises BundleError naming the file at fault."""
    from classify.fuse import Fusion
    from classify.heads import head_from_state

    folder = Path(folder)
    bundle = _read_json(folder)
    path = folder / BUNDLE_FILE
    combined = "joint" if "joint" in bundle else "fusion"
    missing = [k for k in ("class_names", "modalities", "features", "stages", combined) if k not in bundle]
    if missing:
        raise BundleError(f"{path}: missing {', '.join(missing)}")
    _check_files(folder, bundle)
    k = len(bundle["class_names"])
    if combined == "joint":
        return Loaded(folder, bundle, {}, None, _joint_head(folder, bundle, k))
    heads = {}
    for m in bundle["modalities"]:
        entry = bundle["features"].get(m)
        if not isinstance(entry, dict) or "head" not in entry or "cache" not in entry:
            raise BundleError(f"{path}: no head or cache settings for modality {m!r}")
        arrays = _arrays(folder, bundle, entry.get("head_file"), f"{m} head")
        try:
            heads[m] = head_from_state(entry["head"], arrays)
        except (ValueError, TypeError, KeyError) as exc:
            raise BundleError(f"{folder / entry['head_file']}: the {m} head cannot be rebuilt ({exc})") from None
        if heads[m].n_classes_ != k:
            raise BundleError(f"{path}: {k} class names but the {m} head has {heads[m].n_classes_} classes")
    desc = bundle["fusion"]
    arrays = _arrays(folder, bundle, desc.get("file"), "fusion") if desc.get("file") else {}
    try:
        fusion = Fusion.from_state(desc, arrays)
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{path}: the fusion cannot be rebuilt ({exc})") from None
    if fusion.n_classes != k or fusion.modalities != list(bundle["modalities"]):
        raise BundleError(f"{path}: the fusion is for {fusion.modalities} with {fusion.n_classes} classes, "
                          f"the bundle lists {bundle['modalities']} with {k}")
    return Loaded(folder, bundle, heads, fusion)


def _joint_head(folder: Path, bundle: dict, k: int):
    """A joint rule's head, rebuilt strictly from its description and arrays (`classify.joint_state`)."""
    from classify.joint_state import joint_from_state

    path, desc = folder / BUNDLE_FILE, bundle["joint"]
    if not isinstance(desc, dict):
        raise BundleError(f"{path}: 'joint' is not a description of a joint head")
    for m in bundle["modalities"]:
        if not isinstance(bundle["features"].get(m), dict) or "cache" not in bundle["features"][m]:
            raise BundleError(f"{path}: no cache settings for modality {m!r}")
    arrays = _arrays(folder, bundle, desc.get("file"), "joint head")
    try:
        head = joint_from_state(desc, arrays)
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{folder / desc['file']}: the joint head cannot be rebuilt ({exc})") from None
    if head.n_classes_ != k or head.modalities_ != list(bundle["modalities"]):
        raise BundleError(f"{path}: the joint head is for {head.modalities_} with {head.n_classes_} classes, "
                          f"the bundle lists {bundle['modalities']} with {k}")
    return head
