"""The batched PyTorch TV-L1 (extract.tvl1_torch) against OpenCV's, on the same synthetic pairs.

    python -m benchmarks.tvl1 [--pairs 32] [--size 224] [--threads 2] [--device cpu]

Why: the torch solver is only worth its code if it is faster than OpenCV's one pair at a time and
agrees with it. Prints pairs per second of both, their ratio, the mean end-point error between the
two flows and the share of quantised values within one grey level.
"""
from __future__ import annotations

import sys
import time
from typing import Sequence

import cv2
import numpy as np
import torch

from extract import cli
from extract.clip import ClipSettings
from extract.flow import FlowSettings, quantise
from extract.tvl1_torch import TorchTVL1


def synthetic_pairs(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n textured uint8 frame pairs [n, size, size]: multi-scale noise with shapes, moved by a random
    sub-pixel shift, small rotation and zoom (the kind of motion seen between video frames)."""
    rng = np.random.default_rng(seed)
    big = 2 * size
    prev = np.empty((n, size, size), np.uint8)
    nxt = np.empty((n, size, size), np.uint8)
    for k in range(n):
        tex = np.zeros((big, big), np.float32)
        for cells, amp in ((4, 60.0), (12, 40.0), (40, 25.0), (big // 2, 12.0)):
            layer = rng.standard_normal((cells, cells)).astype(np.float32)
            tex += amp * cv2.resize(layer, (big, big), interpolation=cv2.INTER_CUBIC)
        for _ in range(6):
            c = tuple(int(v) for v in rng.integers(0, big, 2))
            cv2.circle(tex, c, int(rng.integers(8, big // 6)), float(rng.uniform(-80, 80)), -1)
        tex = cv2.GaussianBlur(tex, (0, 0), 1.0) + 128.0
        centre = (big / 2.0, big / 2.0)
        a0 = cv2.getRotationMatrix2D(centre, 0.0, 1.0)
        a1 = cv2.getRotationMatrix2D(centre, float(rng.uniform(-3, 3)), float(rng.uniform(0.97, 1.03)))
        a1[:, 2] += rng.uniform(-3, 3, 2)
        for a, dst in ((a0, prev), (a1, nxt)):
            a = a.copy()
            a[:, 2] -= size / 2.0
            frame = cv2.warpAffine(tex, a, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
            dst[k] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return prev, nxt


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.parser("python -m benchmarks.tvl1", __doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--size", type=int, default=ClipSettings.size)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both torch and OpenCV")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cv-pairs", type=int, default=None, help="pairs timed with OpenCV (default: all)")
    ap.add_argument("--cpu-chunk-pixels", type=int, default=250_000, help="TorchTVL1 CPU chunking (0: one batch)")
    args = ap.parse_args(argv)
    return cli.run(lambda: _bench(args), verbose=args.verbose)


def _bench(args) -> None:
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    prev, nxt = synthetic_pairs(args.pairs, args.size)
    ncv = args.pairs if args.cv_pairs is None else min(args.cv_pairs, args.pairs)

    model = TorchTVL1(device=args.device, cpu_chunk_pixels=args.cpu_chunk_pixels)
    model.calc(prev[:1, :32, :32], nxt[:1, :32, :32])  # warm-up (lazy init, CUDA context and kernels)
    if model.device.type == "cuda":
        torch.cuda.synchronize()

    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    t0, c0 = time.perf_counter(), time.process_time()
    ref = np.stack([tvl1.calc(prev[k], nxt[k], None) for k in range(ncv)])
    t_cv, c_cv = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    out = model.calc(prev, nxt)
    t_torch, c_torch = time.perf_counter() - t0, time.process_time() - c0

    epe = np.sqrt(((out[:ncv] - ref) ** 2).sum(-1))
    bound = FlowSettings.bound
    within = float((np.abs(quantise(out[:ncv], bound).astype(np.int16) - quantise(ref, bound)) <= 1).mean())
    print(f"pairs={args.pairs} size={args.size} threads={args.threads} device={args.device} "
          f"cpu_chunk_pixels={args.cpu_chunk_pixels} "
          f"cv2={cv2.__version__} torch={torch.__version__}")
    print(f"opencv: {ncv / t_cv:.2f} pairs/s ({t_cv:.1f} s wall, {c_cv:.1f} s CPU for {ncv} pairs, one at a time)")
    print(f"torch : {args.pairs / t_torch:.2f} pairs/s ({t_torch:.1f} s wall, {c_torch:.1f} s CPU for {args.pairs} "
          f"pairs, one call)")
    print(f"ratio : torch / opencv = {(args.pairs / t_torch) / (ncv / t_cv):.2f}")
    print(f"agreement: mean EPE {epe.mean():.4f} px, within 1 grey level (bound {bound:g}) {100 * within:.2f}%")


if __name__ == "__main__":
    sys.exit(main())
