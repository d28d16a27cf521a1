"""Classifier heads on cached feature sequences `X [n, L, D]` with `lengths [n]`.

Every head is a scikit-learn estimator (`sklearn.base.BaseEstimator`): each hyperparameter is
an `__init__` argument stored unchanged, so `get_params`, `set_params`, `clone` and the
estimator's repr come from scikit-learn, and a run records exactly those parameters. Its data
are sequences, so `fit` and `predict_proba` take the lengths beside `X` (and `fit` the
validation split, for early stopping):

    head = make_head("lstm", seed=0)
    head.fit(X, lengths, y, X_val, lengths_val, y_val, n_classes=3)
    proba = head.predict_proba(X_test, lengths_test)   # float [n, n_classes]

(`ClassifierMixin` is left out: its `score(X, y)` cannot pass the lengths.)

* `lstm` (`LSTMHead`, PyTorch): optional time pooling to at most `max_steps` steps, per-feature
  standardisation (statistics of the training split), a linear input projection with ReLU and
  dropout, one LSTM layer over the sequence, each video's hidden state at its own last valid
  step (what packing by length gives, see `_lstm_net`) through dropout and a linear layer.
  Adam, class-weighted cross-entropy (weights inversely proportional to class frequency), early
  stopping on the validation loss with the best epoch's
  weights restored. Seeded: the same seed on the same machine gives identical probabilities.
* `linear`: mean over each video's valid steps, then StandardScaler + LogisticRegression
  (class-weighted).
* `mlp`: the same mean-pooled vector, StandardScaler + MLPClassifier (one hidden layer of 256,
  early stopping on an internal 10 % split of the training videos).

Why the LSTM is small. The published ConvNet+LSTM trained LSTM(512) on ResNet-18 features end
to end; here the backbones are frozen and the head only has to read a short sequence of good
features, and the whole table (4 modalities x 5 seeds on 31,761 videos, `python -m
benchmarks.classify`) has to train in under 10 minutes on 2 shared CPU cores. So: inputs are
projected to 64 dimensions before the LSTM (the 1024 -> d projection is the biggest cost per
step: 128 took 1.7x as long per epoch with no better accuracy on the synthetic bench), the LSTM
has 64 hidden units, long sequences are average-pooled in time to at most 16 steps (rgb2d's 79
frames become 16 steps of 5 frames: adjacent frames of a 15 s video are nearly identical, and
every step costs a sequential LSTM update), batches are 512 videos, and training stops after
2 epochs without a better validation loss (the best epoch was 1 to 6 on the bench, so a
patience of 3 mostly paid for one more useless epoch) and after 12 epochs at most: one epoch of
all four modalities costs about 9 s per seed at DMVER size, so 12 epochs x 5 seeds stays within
the 10 minutes even when no run stops early. Torch runs on one intra-op thread
(`threads=1`): with other processes on the 2 cores, two threads made an rgb epoch 6x slower
(18 s against 2.9 s, 19k videos); pass `threads=None` to keep torch's own setting.
The batch size is 512 videos by default on large sets, but `batch_size=None` (the default)
means min(512, max(8, n_train // 10)): a training set of a few hundred videos (the sample
dataset) would otherwise get a single update per epoch and never leave chance level.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
from sklearn.base import BaseEstimator

HEADS = ("lstm", "linear", "mlp")
POOLED_KINDS = ("linear", "mlp")


def mean_pool(X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean over each sequence's valid steps (whatever the padding holds): float32 [n, D]."""
    lengths = np.asarray(lengths)
    out = np.empty((X.shape[0], X.shape[2]), dtype=np.float32)
    for a in range(0, X.shape[0], 4096):
        b = min(X.shape[0], a + 4096)
        out[a:b] = _valid_only(X[a:b], lengths[a:b]).sum(axis=1, dtype=np.float32) / np.maximum(lengths[a:b], 1)[:, None]
    return out


def _valid_only(chunk: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`chunk` with the steps beyond each length zeroed (a copy only when some video is padded)."""
    valid = np.arange(chunk.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return chunk if valid.all() else chunk * valid[:, :, None]


def time_pool(X: np.ndarray, lengths: np.ndarray, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Average adjacent steps in windows of w = ceil(L / max_steps): `[n, ceil(L / w), D]`.

    Windows average only valid steps; a video of length l keeps ceil(l / w) steps. Returns the
    input itself when no pooling is needed.
    """
    n, width, dim = X.shape
    lengths = np.asarray(lengths, dtype=np.int64)
    if not max_steps or width <= max_steps:
        return X, lengths
    w = math.ceil(width / max_steps)
    steps = math.ceil(width / w)
    out = np.empty((n, steps, dim), dtype=np.float32)
    starts = np.arange(steps) * w
    for a in range(0, n, 1024):
        b = min(n, a + 1024)
        chunk = _valid_only(X[a:b], lengths[a:b])
        if steps * w > width:
            chunk = np.concatenate([chunk, np.zeros((b - a, steps * w - width, dim), np.float32)], axis=1)
        counts = np.clip(lengths[a:b, None] - starts[None, :], 0, w)
        out[a:b] = chunk.reshape(b - a, steps, w, dim).sum(axis=2) / np.maximum(counts, 1)[..., None]
    return out, -(-lengths // w)


def check_features(X: np.ndarray, lengths: np.ndarray, what: str) -> None:
    """Refuse sequences whose valid steps hold NaN or infinite values (padding is not looked at):
    a NaN would otherwise become NaN probabilities, which argmax silently counts as class 0."""
    lengths = np.asarray(lengths)
    bad = []
    for a in range(0, len(X), 4096):
        chunk = np.asarray(X[a:a + 4096])
        valid = np.arange(chunk.shape[1])[None, :] < lengths[a:a + 4096, None]
        finite = np.isfinite(chunk.sum(axis=2)) | ~valid  # one pass; a NaN or inf anywhere makes the sum so
        bad += (a + np.flatnonzero(~finite.all(axis=1))).tolist()
    if bad:
        raise ValueError(f"{what}: {len(bad)} video(s) have NaN or infinite feature values (rows {bad[:5]}); "
                         "extract their features again")


def check_labels(y: np.ndarray) -> None:
    """A classifier needs at least two classes among its training videos."""
    present = np.unique(np.asarray(y))
    if len(present) < 2:
        raise ValueError(f"the training split has videos of {len(present)} class(es) only "
                         f"({present.tolist()}); a classifier needs at least two")


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Run the block with `threads` intra-op torch threads (None: leave the setting alone)."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(y) / (n_classes * np.maximum(counts, 1)), 0.0)
    return weights.astype(np.float32)


def _lstm_net(dim: int, proj: int, hidden: int, n_classes: int, dropout: float):
    """The LSTM head's network (torch is imported only when an LSTM head is used)."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Sequential(nn.Linear(dim, proj), nn.ReLU(), nn.Dropout(dropout)) if proj else nn.Identity()
            self.lstm = nn.LSTM(proj or dim, hidden, batch_first=True)
            self.drop = nn.Dropout(dropout)
            self.out = nn.Linear(hidden, n_classes)

        def forward(self, x, lengths):
            out, _ = self.lstm(self.proj(x))
            # A one-way LSTM's state at step l - 1 depends on steps < l only, so reading each
            # video's state at its own last step equals running it on the unpadded sequence
            # (what packing does), without packing's cost on the CPU.
            last = out[torch.arange(out.shape[0]), lengths - 1]
            return self.out(self.drop(last))

    return Net()


class LSTMHead(BaseEstimator):
    """Projection + one LSTM layer + linear, trained with Adam and early stopping."""

    def __init__(self, hidden: int = 64, proj: int = 64, max_steps: int = 16, dropout: float = 0.2,
                 lr: float = 2e-3, weight_decay: float = 1e-4, batch_size: int | None = None, max_epochs: int = 12,
                 patience: int = 2, class_weight: str | None = "balanced", standardize: bool = True,
                 threads: int | None = 1, seed: int = 0, verbose: bool = False):
        self.hidden, self.proj, self.max_steps, self.dropout = hidden, proj, max_steps, dropout
        self.lr, self.weight_decay, self.batch_size = lr, weight_decay, batch_size
        self.max_epochs, self.patience, self.class_weight = max_epochs, patience, class_weight
        self.standardize, self.threads, self.seed, self.verbose = standardize, threads, seed, verbose

    # -- data

    def _prepare(self, X, lengths, fit_stats: bool = False):
        import torch

        original = X
        X, lengths = time_pool(np.asarray(X, dtype=np.float32), np.asarray(lengths, dtype=np.int64), self.max_steps)
        if self.standardize:
            if fit_stats:
                total = max(int(lengths.sum()), 1)
                s = np.zeros(X.shape[2], np.float64)
                s2 = np.zeros(X.shape[2], np.float64)
                for a in range(0, X.shape[0], 2048):
                    chunk = _valid_only(X[a:a + 2048], lengths[a:a + 2048]).astype(np.float64)
                    s += chunk.sum(axis=(0, 1))
                    s2 += np.einsum("ntd,ntd->d", chunk, chunk)
                mean = s / total
                std = np.sqrt(np.maximum(s2 / total - mean ** 2, 0.0))
                self.mean_ = mean.astype(np.float32)
                self.std_ = np.where(std > 1e-6, std, 1.0).astype(np.float32)
            valid = np.arange(X.shape[1])[None, :] < lengths[:, None]
            out = X if X is not original else np.empty(X.shape, np.float32)  # never change the caller's array
            for a in range(0, X.shape[0], 2048):
                b = a + 2048
                out[a:b] = (X[a:b] - self.mean_) / self.std_ * valid[a:b, :, None]
            X = out
        return torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(lengths)

    # -- model

    def _build(self, dim: int, n_classes: int):
        return _lstm_net(dim, self.proj, self.hidden, n_classes, self.dropout)

    def _logits(self, X, lengths):
        import torch

        self.net_.eval()
        outs = []
        with torch.no_grad():
            for a in range(0, X.shape[0], 1024):
                outs.append(self.net_(X[a:a + 1024], lengths[a:a + 1024]))
        return torch.cat(outs) if outs else torch.zeros((0, self.n_classes_))

    def fit(self, X, lengths, y, X_val=None, lengths_val=None, y_val=None, n_classes: int | None = None):
        import torch
        from torch import nn

        y = np.asarray(y, dtype=np.int64)
        check_labels(y)
        check_features(X, lengths, "training features")
        has_val = X_val is not None and len(X_val) > 0
        if has_val:
            check_features(X_val, lengths_val, "validation features")
        if n_classes is None:
            n_classes = int(max(y.max(), np.asarray(y_val).max() if has_val else 0)) + 1
        self.n_classes_ = n_classes
        with torch.random.fork_rng(devices=[]), _torch_threads(self.threads):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            Xt, Lt = self._prepare(X, lengths, fit_stats=True)
            yt = torch.from_numpy(y)
            if has_val:
                Xv, Lv = self._prepare(X_val, lengths_val)
                yv = torch.from_numpy(np.asarray(y_val, dtype=np.int64))
            self.net_ = self._build(Xt.shape[2], n_classes)
            weight = torch.from_numpy(_class_weights(y, n_classes)) if self.class_weight == "balanced" else None
            loss_fn = nn.CrossEntropyLoss(weight=weight)
            opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            best, best_state, bad = math.inf, None, 0
            self.history_ = []
            batch = self.batch_size or min(512, max(8, len(yt) // 10))
            for epoch in range(self.max_epochs):
                self.net_.train()
                order = torch.randperm(len(yt), generator=gen)
                total = 0.0
                for a in range(0, len(order), batch):
                    idx = order[a:a + batch]
                    opt.zero_grad()
                    loss = loss_fn(self.net_(Xt[idx], Lt[idx]), yt[idx])
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                record = {"epoch": epoch + 1, "train_loss": total / max(len(yt), 1)}
                if has_val:
                    logits = self._logits(Xv, Lv)
                    record["val_loss"] = float(loss_fn(logits, yv))
                    record["val_accuracy"] = float((logits.argmax(1) == yv).float().mean())
                    score = record["val_loss"]
                else:
                    score = record["train_loss"]
                self.history_.append(record)
                if self.verbose:
                    print(record, flush=True)
                if score < best - 1e-4:
                    best, bad = score, 0
                    best_state = {k: v.detach().clone() for k, v in self.net_.state_dict().items()}
                else:
                    bad += 1
                    if bad >= self.patience:
                        break
            if best_state is not None:
                self.net_.load_state_dict(best_state)
            self.best_epoch_ = int(np.argmin([r.get("val_loss", r["train_loss"]) for r in self.history_])) + 1
        return self

    def predict_proba(self, X, lengths) -> np.ndarray:
        import torch

        check_features(X, lengths, "features to predict")
        with _torch_threads(self.threads):
            Xt, Lt = self._prepare(X, lengths)
            return torch.softmax(self._logits(Xt, Lt), dim=1).numpy().astype(np.float64)

    def predict(self, X, lengths) -> np.ndarray:
        return self.predict_proba(X, lengths).argmax(axis=1)

    def __getstate__(self):
        state = dict(self.__dict__)
        if "net_" in state:
            state["net_"] = None
            state["_net_state"] = {k: v.clone() for k, v in self.net_.state_dict().items()}
            state["_net_dim"] = self.mean_.shape[0] if self.standardize else None
        return state

    def __setstate__(self, state):
        net_state = state.pop("_net_state", None)
        dim = state.pop("_net_dim", None)
        state.setdefault("threads", 1)  # pickled before `threads` existed
        self.__dict__.update(state)
        if net_state is not None:
            if dim is None:
                key = "proj.0.weight" if self.proj else "lstm.weight_ih_l0"
                dim = net_state[key].shape[1]
            self.net_ = self._build(dim, self.n_classes_)
            self.net_.load_state_dict(net_state)
            self.net_.eval()


def _check_kind(kind) -> None:
    if kind not in POOLED_KINDS:
        raise ValueError(f"PooledHead kind must be 'linear' or 'mlp', not {kind!r}")


class PooledHead(BaseEstimator):
    """Mean-pooled sequence -> StandardScaler + LogisticRegression (`linear`) or MLPClassifier (`mlp`)."""

    def __init__(self, kind: str = "linear", C: float = 1.0, hidden: int = 256, alpha: float = 1e-3,
                 max_iter: int = 1000, seed: int = 0):
        _check_kind(kind)  # a typo fails here, not after the features are loaded (set_params: in fit)
        self.kind, self.C, self.hidden, self.alpha, self.max_iter, self.seed = kind, C, hidden, alpha, max_iter, seed

    def fit(self, X, lengths, y, X_val=None, lengths_val=None, y_val=None, n_classes: int | None = None):
        """The validation split is not used: `mlp` stops early on 10 % of the training videos."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        _check_kind(self.kind)
        y = np.asarray(y, dtype=np.int64)
        check_labels(y)
        check_features(X, lengths, "training features")
        self.n_classes_ = n_classes or int(y.max()) + 1
        if self.kind == "linear":
            model = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight="balanced", random_state=self.seed)
        else:
            enough = len(y) >= 100 and np.bincount(y).min() >= 10
            model = MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha, max_iter=min(self.max_iter, 300),
                                  early_stopping=enough, n_iter_no_change=10, random_state=self.seed)
        self.pipeline_ = make_pipeline(StandardScaler(), model)
        import warnings
        from sklearn.exceptions import ConvergenceWarning
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.pipeline_.fit(mean_pool(np.asarray(X, np.float32), lengths), y)
        return self

    def predict_proba(self, X, lengths) -> np.ndarray:
        check_features(X, lengths, "features to predict")
        p = self.pipeline_.predict_proba(mean_pool(np.asarray(X, np.float32), lengths))
        out = np.zeros((p.shape[0], self.n_classes_))
        out[:, self.pipeline_.classes_] = p  # classes absent from training get probability 0
        return out

    def predict(self, X, lengths) -> np.ndarray:
        return self.predict_proba(X, lengths).argmax(axis=1)


def make_head(name: str, seed: int = 0, **params):
    """A fresh head of the named kind with default hyperparameters unless given."""
    if name == "lstm":
        return LSTMHead(seed=seed, **params)
    if name in POOLED_KINDS:
        return PooledHead(kind=name, seed=seed, **params)
    raise ValueError(f"unknown head {name!r}; choose one of {', '.join(HEADS)}")


# ------------------------------------------------------------------ pickle-free export (model bundles)
def head_state(head) -> tuple[dict, dict]:
    """A fitted head as (JSON-able description, dict of numpy arrays): what a model bundle stores
    instead of a pickle, so loading one runs no code from the file."""
    desc = {"class": type(head).__name__, "params": head.get_params(), "n_classes": int(head.n_classes_)}
    if isinstance(head, LSTMHead):
        arrays = {f"net.{k}": v.detach().cpu().numpy() for k, v in head.net_.state_dict().items()}
        if head.standardize:
            arrays["mean"], arrays["std"] = head.mean_, head.std_
        return desc, arrays
    scaler, model = head.pipeline_[0], head.pipeline_[-1]
    arrays = {"scaler.mean": scaler.mean_, "scaler.scale": scaler.scale_, "classes": model.classes_}
    if head.kind == "linear":
        arrays.update({"coef": model.coef_, "intercept": model.intercept_})
    else:
        desc.update(activation=model.activation, out_activation=model.out_activation_, layers=len(model.coefs_))
        for i, (w, b) in enumerate(zip(model.coefs_, model.intercepts_)):
            arrays[f"coef.{i}"], arrays[f"intercept.{i}"] = w, b
    return desc, arrays


def head_from_state(desc: dict, arrays: dict):
    """The inverse of `head_state`; raises ValueError naming what is missing or inconsistent."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import LabelBinarizer, StandardScaler

    kinds = {"LSTMHead": LSTMHead, "PooledHead": PooledHead}
    if desc.get("class") not in kinds:
        raise ValueError(f"unknown head class {desc.get('class')!r}")
    head = kinds[desc["class"]](**desc["params"])
    head.n_classes_ = int(desc["n_classes"])
    try:
        if isinstance(head, LSTMHead):
            state = {k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net.")}
            key = "proj.0.weight" if head.proj else "lstm.weight_ih_l0"
            head.net_ = head._build(state[key].shape[1], head.n_classes_)
            head.net_.load_state_dict(state)
            head.net_.eval()
            if head.standardize:
                head.mean_, head.std_ = arrays["mean"].astype(np.float32), arrays["std"].astype(np.float32)
            return head
        scaler = StandardScaler()
        scaler.mean_, scaler.scale_ = arrays["scaler.mean"], arrays["scaler.scale"]
        scaler.var_, scaler.n_features_in_ = arrays["scaler.scale"] ** 2, len(arrays["scaler.mean"])
        if head.kind == "linear":
            model = LogisticRegression()
            model.coef_, model.intercept_ = arrays["coef"], arrays["intercept"]
        else:
            model = MLPClassifier(activation=desc["activation"])
            n = int(desc["layers"])
            model.coefs_ = [arrays[f"coef.{i}"] for i in range(n)]
            model.intercepts_ = [arrays[f"intercept.{i}"] for i in range(n)]
            model.n_layers_, model.n_outputs_ = n + 1, model.coefs_[-1].shape[1]
            model.out_activation_ = desc["out_activation"]
            model._label_binarizer = LabelBinarizer().fit(arrays["classes"])
        model.classes_, model.n_features_in_ = arrays["classes"], len(arrays["scaler.mean"])
        head.pipeline_ = make_pipeline(scaler, model)
    except (KeyError, RuntimeError, IndexError) as exc:
        raise ValueError(f"head arrays do not fit its description: {exc}") from None
    if int(np.max(head.pipeline_[-1].classes_, initial=0)) >= head.n_classes_:
        raise ValueError(f"head classes {list(head.pipeline_[-1].classes_)} exceed its {head.n_classes_} classes")
    return head
