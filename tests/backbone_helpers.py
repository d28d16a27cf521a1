"""Helpers for the backbone tests: published key listings and checkpoints the tests make.

`tests/reference/*.txt` are copies of `shared/reference/`'s listings of the public checkpoints'
state-dict keys and shapes (one `key<TAB>(shape)` line each).
"""
from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parent / "reference"


def read_listing(name: str) -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (REFERENCE / name).read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            rows.append((key, tuple(ast.literal_eval(shape))))
    return rows


def randomized_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A state dict in the model's layout with every value randomised (as a trained file would
    differ from a fresh model): weights at a variance-keeping scale, BN statistics and affine
    parameters away from identity, non-zero biases and counters."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in model.state_dict().items():
        shape = value.shape
        if key.endswith("num_batches_tracked"):
            new = torch.tensor(int(torch.randint(1, 10_000, (), generator=gen)))
        elif key.endswith("running_var"):
            new = torch.rand(shape, generator=gen) * 1.5 + 0.5
        elif key.endswith("running_mean"):
            new = torch.randn(shape, generator=gen) * 0.1
        elif key.startswith("bn") or ".bn" in key or ".downsample.1." in key:
            new = (torch.rand(shape, generator=gen) + 0.5) if key.endswith("weight") else torch.randn(shape, generator=gen) * 0.1
        elif key.endswith("bias"):
            new = torch.randn(shape, generator=gen) * 0.1
        elif value.dim() >= 2:
            fan_in = math.prod(shape[1:])
            new = torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
        else:
            new = torch.randn(shape, generator=gen)
        out[key] = new.to(value.dtype)
    return out


def without_counters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same state as files saved by old PyTorch releases: no num_batches_tracked."""
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Run these small-tensor tests single-threaded: on a busy 2-core machine OpenMP's
    multi-threaded kernels can be 10-50x slower than one thread. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
