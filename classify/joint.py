"""Joint heads: one classifier that sees all of a video's modalities at once.

The late-fusion rules (`classify.fuse`: mean, weighted, stack) combine each modality's own class
probabilities, so they cannot learn a class that only a *pairing* of modalities shows (a calm
face over an angry voice). These heads read the modalities' features together:

* `early` (`EarlyFusion`): each modality's steps averaged over its valid steps, standardised
  feature by feature with that modality's training statistics, the vectors concatenated, then
  an MLP (`layers` hidden layers of `hidden` units).
* `tfn` (`TensorFusion`, Zadeh et al. 2017): each modality's averaged vector projected to
  `proj` units with a 1 appended; the outer product of those (which holds every single, pair,
  triple ... of units across modalities) mapped linearly to `hidden` units, then an MLP.
  `form="full"` builds that map on the whole tensor, prod(proj + 1) inputs; `form="low_rank"`
  builds it as `rank` products of per-modality factors (LMF, Liu et al. 2018), never forming
  the tensor. `form="auto"` (default) takes the full tensor for at most 3 modalities whose
  tensor has at most `max_tensor` entries (proj 16: 289 for two, 4,913 for three), else the
  low-rank form: four modalities would give 83,521 inputs per video, a map of 5 million weights
  learnt from 19,000 videos.
* `xattn` (`CrossAttentionFusion`, after MulT, Tsai et al. 2019): the modalities' sequences
  (time-pooled to at most `max_steps` steps) become tokens of `width` units and each token
  attends to the other modalities' tokens, in `layers` small shared transformer layers; each
  modality's tokens are then averaged and the modalities classified together
  (`classify.joint_nets.CrossNet` says how).

API (scikit-learn estimators: `clone`, `get_params`, `set_params` work; every hyperparameter is
a named `__init__` argument, stored as given and checked only by `fit`):

    X = {"rgb": (x, lengths), "audio": (x, lengths), ...}   # x float32 [n, L, D] zero-padded,
                                                            # lengths int [n]; 0 = video lacks it
    head = make_joint("early", seed=0)                      # or EarlyFusion(seed=0, hidden=128)
    head.fit(X, y, X_val, y_val, n_classes=None)           # y: class indices 0..K-1
    proba = head.predict_proba(X_test)                      # float64 [n, K], rows sum to 1
    head.predict(X_test); head.score(X_test, y_test)
    missing_counts(X)                                       # {"audio": 412, ...} videos lacking each
    X = gather({"rgb": cache.load(W, "rgb"), ...}, ids)      # X for a split from loaded caches

Every video of X must have at least one modality. The modalities are the keys of the training
X, in that order (`modalities_`); at prediction a key may be left out (no video has it) but none
may be new, and each modality's feature dimension must match. The padding (steps beyond a
video's length, the whole of an absent modality) is never read. `n_classes` defaults to one more
than the largest label in y and y_val; a class missing from training gets low probabilities.
Fitted attributes: `classes_`, `n_classes_`, `modalities_`, `dims_`, `history_` (per-epoch
losses), `best_epoch_`, `net_` (the torch module).

Missing modalities. A video is classified from the modalities it has: where they meet, an absent
one's slot holds a learned "absent" vector (never zeros posing as features), and cross-attention
never attends to absent tokens. In training, modality dropout hides each present modality of a
video with probability `modality_dropout` (per batch, never all of a video's), so the head also
learns to decide from fewer modalities than most training videos have.

Training follows `classify.heads.LSTMHead`: standardisation statistics from the training split
only (over the videos that have the modality), class-weighted cross-entropy (`class_weight=
"balanced"`), dropout, weight decay, mini-batches (`batch_size=None`: min(512, max(8, n // 10))),
early stopping on the validation loss (the training loss without a validation split) after
`patience` epochs without improvement, the best epoch's weights restored, one torch thread
(`threads=1`), and the same `seed` giving the same probabilities on the same machine. Unlike
LSTMHead the optimiser is AdamW: with Adam's L2 term, weights that seldom get a gradient (the
absent vectors) would be pulled to zero at the full learning rate. Defaults aim at DMVER (19,000
training videos), IEMOCAP (4,000) and stay usable on a 36-video sample (early stopping decides).

Cost, measured on synthetic features of DMVER's shapes (19,000 train, 6,300 val and 6,300 test
videos; rgb and flow [10, 1024], audio [15, 128], text [1, 384]), one seed, one thread, on the
shared 2-core machine under a load average of about 8: an epoch (training and validation) took
about 2.9 s (early), 1.1 s (tfn) and 12 s (xattn); the fits stopped early after 5, 12 and 6
epochs (23, 18 and 79 s) and predicting val and test took 2 to 4 s: five seeds in 2, 1.5 and 7
minutes. At the epoch caps (`max_epochs` 40, 40, 25) five seeds would take at most about 10, 4
and 26 minutes under that load (CPU time was 45 % of wall time). Halving xattn's `max_steps` to
8 halves its cost. Memory: the caller's arrays plus about 1.5 GB.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from classify.heads import check_features, check_labels

JOINT_RULES = ("early", "tfn", "xattn")
CHUNK = 2048  # videos standardised at a time (bounds the temporary copies on DMVER-size splits)


def missing_counts(X: Mapping) -> dict[str, int]:
    """How many videos lack each modality (length 0): `{modality: count}`, for a run's output."""
    return {m: int((np.asarray(pair[1]) == 0).sum()) for m, pair in X.items()}


def gather(features: Mapping, ids: list[str]) -> dict:
    """X for the videos `ids` (in that order) from each modality's loaded cache: `features` maps
    a modality to anything with `.ids`, `.x [n, L, D]` and `.lengths` (`features.cache.Features`).
    A video absent from a modality's cache gets length 0 (and zeros) there."""
    out = {}
    for m, f in features.items():
        where = {v: i for i, v in enumerate(f.ids)}
        idx = np.array([where.get(v, -1) for v in ids], dtype=np.int64)
        has = idx >= 0
        x = np.zeros((len(ids),) + tuple(f.x.shape[1:]), np.float32)
        lengths = np.zeros(len(ids), np.int64)
        x[has] = f.x[idx[has]]
        lengths[has] = np.asarray(f.lengths)[idx[has]]
        out[m] = (x, lengths)
    return out


def check_inputs(X, what: str, modalities: list[str] | None = None, dims: dict | None = None) -> dict:
    """`X` checked and made uniform: `{modality: (float32 [n, L, D], int64 [n])}`.

    With `modalities` (a fitted head's), they come in that order, a left-out one as absent from
    every video, an unknown one refused. One clear `ValueError` for any mistake."""
    if not isinstance(X, Mapping) or not X:
        raise ValueError(f"{what}: give a dict modality -> (x [n, L, D], lengths [n]), not {type(X).__name__}")
    out, n, first = {}, None, None
    for m, pair in X.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{what}: {m!r} must be a pair (x [n, L, D], lengths [n])")
        x, lengths = np.asarray(pair[0], dtype=np.float32), np.asarray(pair[1])
        if x.ndim != 3:
            raise ValueError(f"{what}: {m!r} features must be [videos, steps, dim], got shape {x.shape}")
        if lengths.shape != (len(x),) or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
            raise ValueError(f"{what}: {m!r} lengths must be {len(x)} integers, got {lengths.dtype} {lengths.shape}")
        lengths = lengths.astype(np.int64)
        bad = np.flatnonzero((lengths < 0) | (lengths > x.shape[1]))
        if bad.size:
            raise ValueError(f"{what}: {m!r} has {bad.size} length(s) outside 0..{x.shape[1]} "
                             f"(rows {bad[:5].tolist()})")
        if n is None:
            n, first = len(x), m
        elif len(x) != n:
            raise ValueError(f"{what}: {m!r} has {len(x)} videos but {first!r} has {n}; "
                             "give the same videos in the same order")
        if dims is not None and m in dims and x.shape[2] != dims[m]:
            raise ValueError(f"{what}: {m!r} features have {x.shape[2]} dimensions, the head was trained on {dims[m]}")
        check_features(x, lengths, f"{what} ({m})")
        out[m] = (x, lengths)
    if modalities is not None:
        unknown = [m for m in out if m not in modalities]
        if unknown:
            raise ValueError(f"{what}: modality {unknown[0]!r} was not in training "
                             f"(trained on {', '.join(modalities)})")
        out = {m: out.get(m) or (np.zeros((n, 1, dims[m]), np.float32), np.zeros(n, np.int64)) for m in modalities}
    empty = np.flatnonzero(np.all([lengths == 0 for _, lengths in out.values()], axis=0))
    if empty.size:
        raise ValueError(f"{what}: {empty.size} video(s) have none of the modalities {', '.join(out)} "
                         f"(rows {empty[:5].tolist()}); leave them out")
    return out


def _labels(y, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or (y.size and not np.issubdtype(y.dtype, np.integer)) or (y.size and y.min() < 0):
        raise ValueError(f"{what}: labels must be {n} class indices 0..K-1, got {y.dtype} {y.shape}")
    return y.astype(np.int64)


def masked_mean(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean of each video's valid steps, `[n, D]` (zeros for length 0). The padding is selected
    away, not multiplied by zero, so even NaN there cannot leak in."""
    out = np.empty((x.shape[0], x.shape[2]), np.float32)
    for c in range(0, len(x), CHUNK):
        keep = np.arange(x.shape[1])[None, :, None] < lengths[c:c + CHUNK, None, None]
        out[c:c + CHUNK] = np.where(keep, x[c:c + CHUNK], 0.0).sum(1) / np.maximum(lengths[c:c + CHUNK], 1)[:, None]
    return out


def window_pool(x: np.ndarray, lengths: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each run of `w` steps over its valid steps: `[n, ceil(L / w), D]`, lengths
    `ceil(l / w)`. The window is fixed when the head is fitted, so the pooling of a video does not
    depend on how wide the batch it comes in is padded."""
    if w <= 1:
        return x, lengths
    steps = -(-x.shape[1] // w)
    out = np.empty((x.shape[0], steps, x.shape[2]), np.float32)
    for s in range(steps):
        out[:, s] = masked_mean(x[:, s * w:(s + 1) * w], np.clip(lengths - s * w, 0, w))
    return out, -(-lengths // w)


def _moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (1 where constant) of `rows [k, D]`, in float64 chunks."""
    total, squares = np.zeros(rows.shape[1]), np.zeros(rows.shape[1])
    for a in range(0, len(rows), 4 * CHUNK):
        chunk = rows[a:a + 4 * CHUNK].astype(np.float64)
        total += chunk.sum(0)
        squares += np.einsum("kd,kd->d", chunk, chunk)
    mean = total / max(len(rows), 1)
    std = np.sqrt(np.maximum(squares / max(len(rows), 1) - mean ** 2, 0.0))
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


class _JointHead(ClassifierMixin, BaseEstimator):
    """Checking, standardisation bookkeeping and the training loop that all joint heads share.
    A subclass gives `_fit_stats(X)`, `_tensors(X) -> joint_nets.Inputs` and `_build()`."""

    def _check_params(self):
        if not 0 <= self.dropout < 1 or not 0 <= self.modality_dropout < 1:
            raise ValueError(f"dropout and modality_dropout must be in [0, 1), "
                             f"got {self.dropout}, {self.modality_dropout}")
        if self.class_weight not in (None, "balanced"):
            raise ValueError(f"class_weight must be None or 'balanced', not {self.class_weight!r}")
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"max_epochs and patience must be at least 1, got {self.max_epochs}, {self.patience}")

    def fit(self, X, y, X_val=None, y_val=None, n_classes: int | None = None):
        """Train on X, y; stop early on (X_val, y_val) when given. Returns self."""
        import torch

        from classify import joint_nets as nets

        self._check_params()
        X = check_inputs(X, "training features")
        y = _labels(y, len(next(iter(X.values()))[0]), "training labels")
        check_labels(y)
        for m, (_, lengths) in X.items():
            if not (lengths > 0).any():
                raise ValueError(f"training features: no training video has {m!r}; leave that modality out")
        self.modalities_ = list(X)
        self.dims_ = {m: int(x.shape[2]) for m, (x, _) in X.items()}
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        has_val = y_val is not None and len(y_val) > 0
        if has_val:
            X_val = check_inputs(X_val, "validation features", self.modalities_, self.dims_)
            y_val = _labels(y_val, len(next(iter(X_val.values()))[0]), "validation labels")
        top = int(max(y.max(), y_val.max() if has_val else 0))
        if n_classes is not None and n_classes <= top:
            raise ValueError(f"n_classes={n_classes} but a label is {top}")
        self.n_classes_ = int(n_classes or top + 1)
        self.classes_ = np.arange(self.n_classes_)
        with torch.random.fork_rng(devices=[]), nets.torch_threads(self.threads):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            self._fit_stats(X)
            train = self._tensors(X)
            val = self._tensors(X_val) if has_val else None
            del X, X_val  # the standardised copies are what training reads
            self._train(train, torch.from_numpy(y), val, torch.from_numpy(y_val) if has_val else None, gen)
        return self

    def _train(self, train, yt, val, yv, gen):
        import torch
        from torch import nn

        from classify import joint_nets as nets

        self.net_ = self._build()
        weight = None
        if self.class_weight == "balanced":
            counts = torch.bincount(yt, minlength=self.n_classes_).double()
            weight = torch.where(counts > 0, len(yt) / (self.n_classes_ * counts.clamp(min=1)), 0.0).float()
        loss_fn = nn.CrossEntropyLoss(weight=weight)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        batch = self.batch_size or min(512, max(8, len(yt) // 10))
        best, best_state, stale = math.inf, None, 0
        self.history_, self.best_epoch_ = [], 0  # 0: no epoch ever improved (a diverged run)
        for epoch in range(1, self.max_epochs + 1):
            started = time.perf_counter()
            self.net_.train()
            order, total = torch.randperm(len(yt), generator=gen), 0.0
            for a in range(0, len(order), batch):
                idx = order[a:a + batch]
                part = train.take(idx)
                present = nets.drop_modalities(part.present, self.modality_dropout, gen)
                loss = loss_fn(self.net_(part.feats, part.lengths, present), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            record = {"epoch": epoch, "train_loss": total / len(yt)}
            if val is not None:
                logits = self._logits(val)
                record["val_loss"] = float(loss_fn(logits, yv))
                record["val_accuracy"] = float((logits.argmax(1) == yv).float().mean())
            record["seconds"] = round(time.perf_counter() - started, 3)
            self.history_.append(record)
            if self.verbose:
                print(record, flush=True)
            score = record.get("val_loss", record["train_loss"])
            if score < best - 1e-4:
                best, stale, self.best_epoch_ = score, 0, epoch
                best_state = {k: v.detach().clone() for k, v in self.net_.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if best_state is not None:
            self.net_.load_state_dict(best_state)
        self.net_.eval()

    def _logits(self, inputs):
        import torch

        self.net_.eval()
        with torch.no_grad():
            outs = [self.net_(*inputs.take(torch.arange(a, min(a + 1024, inputs.videos))))
                    for a in range(0, inputs.videos, 1024)]
        return torch.cat(outs) if outs else torch.zeros((0, self.n_classes_))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities `[n, n_classes_]` (float64)."""
        import torch

        from classify import joint_nets as nets

        if not hasattr(self, "net_"):
            raise ValueError(f"this {type(self).__name__} is not fitted yet; call fit first")
        X = check_inputs(X, "features to predict", self.modalities_, self.dims_)
        with nets.torch_threads(self.threads):
            return torch.softmax(self._logits(self._tensors(X)), dim=1).numpy().astype(np.float64)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class _PooledInputs:
    """`early` and `tfn` read each modality as one vector: the mean of its valid steps,
    standardised with the training videos' statistics (the videos that have it)."""

    def _fit_stats(self, X):
        self.scale_ = {}
        for m, (x, lengths) in X.items():
            self.scale_[m] = _moments(masked_mean(x, lengths)[lengths > 0])

    def _tensors(self, X):
        import torch

        from classify import joint_nets as nets

        feats = []
        for m, (x, lengths) in X.items():
            mean, std = self.scale_[m]
            z = (masked_mean(x, lengths) - mean) / std
            z[lengths == 0] = 0.0  # never read: the network puts its absent vector there
            feats.append(torch.from_numpy(z))
        present = torch.from_numpy(np.stack([lengths > 0 for _, lengths in X.values()], axis=1))
        return nets.Inputs(feats, None, present)


class EarlyFusion(_PooledInputs, _JointHead):
    """`early`: standardised mean-pooled vectors of all modalities, concatenated, into an MLP."""

    def __init__(self, hidden: int = 256, layers: int = 1, dropout: float = 0.3, modality_dropout: float = 0.15,
                 lr: float = 1e-3, weight_decay: float = 1e-2, batch_size: int | None = None, max_epochs: int = 40,
                 patience: int = 4, class_weight: str | None = "balanced", threads: int | None = 1, seed: int = 0,
                 verbose: bool = False):
        self.hidden, self.layers, self.dropout, self.modality_dropout = hidden, layers, dropout, modality_dropout
        self.lr, self.weight_decay, self.batch_size, self.max_epochs = lr, weight_decay, batch_size, max_epochs
        self.patience, self.class_weight, self.threads, self.seed, self.verbose = (
            patience, class_weight, threads, seed, verbose)

    def _build(self):
        from classify import joint_nets as nets

        return nets.EarlyNet([self.dims_[m] for m in self.modalities_], self.hidden, self.layers, self.n_classes_,
                             self.dropout)


class TensorFusion(_PooledInputs, _JointHead):
    """`tfn`: per-modality projections with a 1 appended, their outer product (full or
    low-rank, see `form`), then an MLP."""

    def __init__(self, proj: int = 16, hidden: int = 64, form: str = "auto", rank: int = 8, max_tensor: int = 8192,
                 dropout: float = 0.2, modality_dropout: float = 0.15, lr: float = 1e-3, weight_decay: float = 1e-2,
                 batch_size: int | None = None, max_epochs: int = 40, patience: int = 4,
                 class_weight: str | None = "balanced", threads: int | None = 1, seed: int = 0, verbose: bool = False):
        self.proj, self.hidden, self.form, self.rank, self.max_tensor = proj, hidden, form, rank, max_tensor
        self.dropout, self.modality_dropout, self.lr, self.weight_decay = dropout, modality_dropout, lr, weight_decay
        self.batch_size, self.max_epochs, self.patience = batch_size, max_epochs, patience
        self.class_weight = class_weight
        self.threads, self.seed, self.verbose = threads, seed, verbose

    def _check_params(self):
        super()._check_params()
        if self.form not in ("auto", "full", "low_rank"):
            raise ValueError(f"form must be 'auto', 'full' or 'low_rank', not {self.form!r}")
        if self.form != "full" and self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")

    def fusion_rank(self) -> int:
        """The low-rank form's rank this head uses once fitted, 0 for the full tensor."""
        size = (self.proj + 1) ** len(self.modalities_)
        full = self.form == "full" or (self.form == "auto" and len(self.modalities_) <= 3 and size <= self.max_tensor)
        return 0 if full else self.rank

    def _build(self):
        from classify import joint_nets as nets

        return nets.TensorNet([self.dims_[m] for m in self.modalities_], self.proj, self.hidden, self.fusion_rank(),
                              self.n_classes_, self.dropout)


class CrossAttentionFusion(_JointHead):
    """`xattn`: a small cross-modal transformer over the modalities' (time-pooled) sequences."""

    def __init__(self, width: int = 32, heads: int = 2, layers: int = 1, ff: int = 64, max_steps: int = 16,
                 dropout: float = 0.1, modality_dropout: float = 0.15, lr: float = 1e-3, weight_decay: float = 1e-2,
                 batch_size: int | None = None, max_epochs: int = 25, patience: int = 4,
                 class_weight: str | None = "balanced", threads: int | None = 1, seed: int = 0, verbose: bool = False):
        self.width, self.heads, self.layers, self.ff, self.max_steps = width, heads, layers, ff, max_steps
        self.dropout, self.modality_dropout, self.lr, self.weight_decay = dropout, modality_dropout, lr, weight_decay
        self.batch_size, self.max_epochs, self.patience = batch_size, max_epochs, patience
        self.class_weight = class_weight
        self.threads, self.seed, self.verbose = threads, seed, verbose

    def _check_params(self):
        super()._check_params()
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be a multiple of heads ({self.heads})")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")

    def _fit_stats(self, X):
        """Each modality's pooling window (from its longest training video) and the per-feature
        statistics of its pooled valid steps."""
        self.window_, self.scale_ = {}, {}
        for m, (x, lengths) in X.items():
            self.window_[m] = w = max(1, math.ceil(int(lengths.max()) / self.max_steps))
            pooled, steps = window_pool(x, lengths, w)
            valid = np.arange(pooled.shape[1])[None, :] < steps[:, None]
            self.scale_[m] = _moments(pooled[valid])

    def _tensors(self, X):
        import torch

        from classify import joint_nets as nets

        feats, lengths_out = [], []
        for m, (x, lengths) in X.items():
            width = max(1, -(-int(lengths.max()) // self.window_[m]) * self.window_[m])
            pooled, steps = window_pool(x[:, :width], lengths, self.window_[m])  # steps beyond every video dropped
            with warnings.catch_warnings():  # a read-only (memory-mapped) cache: torch only reads it
                warnings.filterwarnings("ignore", message=".*not writable.*")
                feats.append(torch.from_numpy(pooled))  # standardised batch by batch in the network
            lengths_out.append(torch.from_numpy(steps))
        present = torch.from_numpy(np.stack([lengths > 0 for _, lengths in X.values()], axis=1))
        return nets.Inputs(feats, lengths_out, present)

    def _build(self):
        from classify import joint_nets as nets

        return nets.CrossNet([self.dims_[m] for m in self.modalities_], [self.scale_[m] for m in self.modalities_],
                             self.width, self.heads, self.layers, self.ff, self.n_classes_, self.dropout)


_HEADS = {"early": EarlyFusion, "tfn": TensorFusion, "xattn": CrossAttentionFusion}


def make_joint(rule: str, seed: int = 0, **params):
    """A fresh joint head for `rule` (one of JOINT_RULES), default hyperparameters unless given."""
    if rule not in _HEADS:
        raise ValueError(f"unknown joint rule {rule!r}; choose one of {', '.join(JOINT_RULES)}")
    return _HEADS[rule](seed=seed, **params)
