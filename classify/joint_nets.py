"""The PyTorch networks behind `classify.joint`'s heads, and modality dropout.

Every network takes the same three things, so one training loop (`classify.joint`) serves all:
`forward(feats, lengths, present)` with, per modality in the head's order, `feats[i]` (a
standardised pooled vector `[b, D_i]`, or a standardised sequence `[b, L_i, D_i]` for `CrossNet`),
`lengths[i]` (valid steps `[b]`, sequences only, else None) and `present [b, M]` (bool: the video
has modality i and modality dropout kept it). An absent modality never enters as numbers: where
the modalities meet, its slot holds a learned "absent" vector of its own (started at zero), so the
network can tell "no audio" from "audio that happens to be average".

Kept in its own module so that `import classify.joint` stays free of torch, and so that the
classes are module-level (a fitted head pickles with its network).
"""
from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Inputs(NamedTuple):
    """One split's prepared tensors (see the module docstring for the fields)."""
    feats: list
    lengths: list | None
    present: torch.Tensor

    def take(self, idx: torch.Tensor) -> "Inputs":
        """The videos `idx` (a tensor: always a copy). In sequences, the copy's padding is
        zeroed, so whatever the source holds there (even NaN) never reaches a product."""
        if self.lengths is None:
            return Inputs([x[idx] for x in self.feats], None, self.present[idx])
        feats, lengths = [], []
        for x, n in zip(self.feats, self.lengths):
            part, n = x[idx], n[idx]
            part.masked_fill_((torch.arange(part.shape[1])[None, :] >= n[:, None])[:, :, None], 0.0)
            feats.append(part)
            lengths.append(n)
        return Inputs(feats, lengths, self.present[idx])

    @property
    def videos(self) -> int:
        return int(self.present.shape[0])


def drop_modalities(present: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Hide each present modality of each video with probability p, never all of a video's:
    where every present one was drawn, one of them (chosen at random) is kept."""
    if p <= 0:
        return present
    kept = present & ~(torch.rand(present.shape, generator=gen) < p)
    lost = present.any(dim=1) & ~kept.any(dim=1)
    pick = torch.where(present, torch.rand(present.shape, generator=gen), torch.full(present.shape, -1.0)).argmax(dim=1)
    kept[lost, pick[lost]] = True
    return kept


def _fill(h: torch.Tensor, present: torch.Tensor, absent: torch.Tensor) -> torch.Tensor:
    """`h` where the modality is present, the learned `absent` vector elsewhere."""
    return torch.where(present[:, None], h, absent.expand_as(h))


def _mlp(width_in: int, hidden: int, layers: int, n_classes: int, dropout: float) -> nn.Sequential:
    parts = []
    for _ in range(layers):
        parts += [nn.Linear(width_in, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width_in = hidden
    return nn.Sequential(*parts, nn.Linear(width_in, n_classes))


class EarlyNet(nn.Module):
    """`early`: the modalities' standardised pooled vectors side by side, through an MLP."""

    def __init__(self, dims: list[int], hidden: int, layers: int, n_classes: int, dropout: float):
        super().__init__()
        self.absent = nn.ParameterList([nn.Parameter(torch.zeros(d)) for d in dims])
        self.mlp = _mlp(sum(dims), hidden, layers, n_classes, dropout)

    def forward(self, feats, lengths, present):
        return self.mlp(torch.cat([_fill(z, present[:, i], a) for i, (z, a) in enumerate(zip(feats, self.absent))], 1))


class TensorNet(nn.Module):
    """`tfn`: each modality projected to `proj` units with a constant 1 appended; their outer
    product (every unimodal, bimodal ... M-modal product of units) mapped linearly to `hidden`
    units, then an MLP. `rank=0` builds that map on the full tensor (prod(proj + 1) inputs);
    `rank=r` builds the same kind of map as a sum of r products of per-modality factors (LMF),
    never forming the tensor: the cost grows with the sum of the dimensions, not their product."""

    def __init__(self, dims: list[int], proj: int, hidden: int, rank: int, n_classes: int, dropout: float):
        super().__init__()
        self.rank = rank
        self.encoders = nn.ModuleList([nn.Sequential(nn.Linear(d, proj), nn.ReLU(), nn.Dropout(dropout)) for d in dims])
        self.absent = nn.ParameterList([nn.Parameter(torch.zeros(proj)) for _ in dims])
        if rank:
            std = math.sqrt(2.0 / (proj + 1 + hidden))
            self.factors = nn.ParameterList([nn.Parameter(torch.randn(rank, proj + 1, hidden) * std) for _ in dims])
            self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / rank))
            self.bias = nn.Parameter(torch.zeros(hidden))
        else:
            self.tensor_map = nn.Linear((proj + 1) ** len(dims), hidden)
        self.post = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), _mlp(hidden, hidden, 1, n_classes, dropout))

    def forward(self, feats, lengths, present):
        ones = torch.ones(present.shape[0], 1)
        hs = [torch.cat([_fill(enc(z), present[:, i], a), ones], 1)
              for i, (z, enc, a) in enumerate(zip(feats, self.encoders, self.absent))]
        if self.rank:
            fused = None
            for h, w in zip(hs, self.factors):
                part = torch.einsum("bp,rph->brh", h, w)
                fused = part if fused is None else fused * part
            fused = torch.einsum("brh,r->bh", fused, self.rank_weights) + self.bias
        else:
            outer = hs[0]
            for h in hs[1:]:
                outer = (outer[:, :, None] * h[:, None, :]).flatten(1)
            fused = self.tensor_map(outer)
        return self.post(fused)


def positions(steps: int, width: int) -> torch.Tensor:
    """Sinusoidal position codes `[steps, width]` (no learned table, so any length works)."""
    pos = torch.arange(steps, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    out = torch.zeros(steps, width)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: width // 2])
    return out


class CrossLayer(nn.Module):
    """Pre-norm transformer layer whose attention follows a per-video `allowed [b, T, T]` mask."""

    def __init__(self, width: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, allowed):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class CrossNet(nn.Module):
    """`xattn`: every modality's steps become tokens (a linear projection per modality, plus a
    learned modality code and a sinusoidal position code); in each layer a token attends only to
    the valid tokens of the *other* present modalities, and to one learned "nothing" token, which
    keeps attention defined when a video has a single modality. Its own content goes on through
    the residual path. Each modality's tokens are then averaged over its valid steps, the
    modalities' averages (or absent vectors) concatenated, and classified by a small MLP.
    The layers are shared by all modalities (MulT keeps one transformer per modality pair):
    far fewer weights for the few thousand videos these heads train on.

    Unlike the other nets it takes the sequences as they are (`Inputs.take` zeroes the padding of
    each batch) and folds the standardisation (`scales`: per modality, the training mean and
    standard deviation of a step) into its input projections: a standardised copy of DMVER's
    training sequences would take 1.7 GB, and standardising every batch anew, more time."""

    def __init__(self, dims: list[int], scales: list, width: int, heads: int, layers: int, ff: int,
                 n_classes: int, dropout: float):
        super().__init__()
        for i, (mean, std) in enumerate(scales):
            self.register_buffer(f"mean{i}", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer(f"std{i}", torch.as_tensor(std, dtype=torch.float32))
        self.inputs = nn.ModuleList([nn.Linear(d, width) for d in dims])
        self.codes = nn.Parameter(torch.randn(len(dims), width) * 0.1)
        self.nothing = nn.Parameter(torch.randn(1, 1, width) * 0.1)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList([CrossLayer(width, heads, ff, dropout) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.absent = nn.Parameter(torch.zeros(len(dims), width))
        self.head = nn.Sequential(nn.Dropout(dropout), _mlp(len(dims) * width, width, 1, n_classes, dropout))

    def forward(self, feats, lengths, present):
        b = present.shape[0]
        tokens, valid, owner = [self.nothing.expand(b, 1, -1)], [torch.ones(b, 1, dtype=torch.bool)], [-1]
        for i, (x, n) in enumerate(zip(feats, lengths)):
            steps = x.shape[1]
            valid.append((torch.arange(steps)[None, :] < n[:, None]) & present[:, i:i + 1])
            # the standardisation folded into the input projection: no standardised copy of x
            weight = self.inputs[i].weight / getattr(self, f"std{i}")
            bias = self.inputs[i].bias - weight @ getattr(self, f"mean{i}")
            tokens.append(F.linear(x, weight, bias) + self.codes[i] + positions(steps, self.codes.shape[1]))
            owner += [i] * steps
        seq, valid = self.drop(torch.cat(tokens, 1)), torch.cat(valid, 1)
        owner = torch.tensor(owner)
        other = (owner[:, None] != owner[None, :]) | (owner[None, :] < 0)   # [T, T]: query may see key
        allowed = other[None] & valid[:, None, :]
        for layer in self.layers:
            seq = layer(seq, allowed)
        seq = self.norm(seq)
        pooled, start = [], 1
        for i, x in enumerate(feats):
            steps = x.shape[1]
            mask = valid[:, start:start + steps, None].float()
            mean = (seq[:, start:start + steps] * mask).sum(1) / mask.sum(1).clamp(min=1)
            pooled.append(_fill(mean, present[:, i], self.absent[i]))
            start += steps
        return self.head(torch.cat(pooled, 1))


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with `threads` intra-op torch threads (None: leave torch's setting alone)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
