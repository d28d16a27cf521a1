"""Batched dual TV-L1 optical flow in PyTorch that agrees with OpenCV contrib's
`cv2.optflow.DualTVL1OpticalFlow` at its default parameters.

Why: OpenCV solves one pair at a time on the CPU; here every step works on a batch `[B, H, W]` of
same-size pairs, on CPU or CUDA alike, so a GPU can take many videos' pairs at once.

Same algorithm and order of steps as OpenCV, so flows differ only by float rounding (about
0.001-0.01 px mean; see tests/test_tvl1_torch.py):

* input grey levels 0..255 as they are; pyramid by INTER_LINEAR-style resize (step 1/scale_step,
  no smoothing, stop before a level under 16 px); flow resized up and scaled by 1/scale_step,
  dual variables reset per level;
* per warp: bicubic (Keys a = -0.75) warp of I1 and its centred gradient, zero outside; then up to
  `outer_iterations` x (median filter, up to `inner_iterations` x (threshold, primal, dual step));
  a pair stops for the warp once sum((u - u_old)^2) <= epsilon^2 * pixels of the level.
* Warping uses gathers at exact pixel positions, not grid_sample: its normalised coordinates put
  zero flow ~1e-5 px off the pixel centres, which next to the zero-padded border starts a drift
  OpenCV never has. OpenCV < 5 rounds remap positions to 1/32 px (`remap_subpixel_bits`, "auto"
  follows the installed cv2).
* The median is a min/max selection network (`_median_programs`): equal to cv2.medianBlur bit for
  bit and far cheaper than torch.median over unfolded windows.
* Pairs converge at different steps. A converged pair is frozen by a mask, so each pair gets
  exactly the schedule it would get alone; once at most `compact_ratio` of the working set still
  iterates, finished pairs are dropped from it (compaction) so they stop costing work. On CUDA the
  all-done test (a host sync) runs only every `sync_every` steps; neither changes the results.

Not implemented: gamma != 0 and useInitialFlow. Where |grad I1w|^2 <= FLT_EPSILON the threshold
step may move u by up to lambda*theta*|grad I1w| (< 2e-5 px) where OpenCV leaves it.

`python -m benchmarks.tvl1` times it against OpenCV on the same pairs.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

_FLT_EPSILON = float(np.finfo(np.float32).eps)


def _opencv_subpixel_bits() -> int | None:
    """5 (1/32-pixel remap positions) for OpenCV < 5, None (exact) for OpenCV >= 5 or without cv2."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - cv2 is a dependency of the project
        return None
    try:
        major = int(str(cv2.__version__).split(".")[0])
    except ValueError:  # pragma: no cover
        return None
    return 5 if major < 5 else None


def _as_batch(x, name: str) -> tuple[torch.Tensor, bool]:
    """-> (tensor [B, H, W] on CPU or its own device, True when the input was a single [H, W] image)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    single = t.dim() == 2
    if single:
        t = t.unsqueeze(0)
    if t.dim() == 4 and t.shape[-1] == 1:  # [B, H, W, 1] grey frames
        t = t[..., 0]
    if t.dim() != 3:
        raise ValueError(f"{name}: expected [H, W] or [B, H, W] grey images, got shape {tuple(t.shape)}")
    return t, single


def _odd_even_merge_sort(n: int) -> list[tuple[int, int]]:
    """Comparators (lo, hi) of Batcher's odd-even merge sort on n wires (n a power of two)."""
    comps = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        comps.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return comps


def _fold_network(n_wires: int, ascending: Sequence[Sequence[int]], outputs: Sequence[int],
                  comparators: Sequence[tuple[int, int]]) -> tuple:
    """Specialise a comparator network to inputs with known order and to the outputs actually used.

    `ascending` lists chains of wires whose values are known to be in ascending order (a wire that
    holds -inf can be given as a chain before every wire, +inf after every wire). Walking the network
    while tracking which wire is known to be <= which, a comparator with a known outcome becomes
    nothing or a swap of wires; afterwards a backward pass keeps only the min/max results that the
    `outputs` depend on. Returns the program: steps ("swap", a, b) or (a, b, want_min, want_max)."""
    le = np.eye(n_wires, dtype=bool)  # le[i, j]: value on wire i <= value on wire j, for sure
    for chain in ascending:
        for i, a in enumerate(chain):
            le[a, list(chain[i:])] = True
    steps = []
    for a, b in comparators:
        if le[a, b]:
            continue
        if le[b, a]:
            le[[a, b]] = le[[b, a]]
            le[:, [a, b]] = le[:, [b, a]]
            steps.append(("swap", a, b))
            continue
        below_a, below_b = le[:, a].copy(), le[:, b].copy()
        above_a, above_b = le[a].copy(), le[b].copy()
        le[a], le[:, a] = above_a | above_b, below_a & below_b  # min goes to wire a
        le[b], le[:, b] = above_a & above_b, below_a | below_b  # max goes to wire b
        le[a, a] = le[b, b] = le[a, b] = True
        le[b, a] = False
        steps.append((a, b))
    needed = set(outputs)
    program = []
    for step in reversed(steps):
        if step[0] == "swap":
            _, a, b = step
            had_a, had_b = a in needed, b in needed
            needed.difference_update((a, b))
            if had_a:
                needed.add(b)
            if had_b:
                needed.add(a)
            program.append(step)
        else:
            a, b = step
            if a in needed or b in needed:
                program.append((a, b, a in needed, b in needed))
                needed.update((a, b))
    program.reverse()
    return tuple(program)


def _padded_network(count: int, sorted_chains: Sequence[Sequence[int]], ranks: Sequence[int]):
    """Batcher's network over the next power of two >= count, spare wires holding -inf/+inf split
    evenly, folded for the given input chains; -> (program, output wires of the wanted ranks)."""
    n = 1
    while n < count:
        n *= 2
    low = (n - count) // 2
    lows, highs = range(count, count + low), range(count + low, n)
    chains = [list(c) for c in sorted_chains]
    chains += [[w, x] for w in lows for x in range(n)] + [[x, w] for w in highs for x in range(n)]
    outputs = [low + r for r in ranks]
    return _fold_network(n, chains, outputs, _odd_even_merge_sort(n)), outputs


@functools.lru_cache(maxsize=None)
def _median_programs(k: int):
    """Min/max programs for the median of a k x k window (k odd), in three stages.

    1. Sort every vertical run of k values (shared by the k windows that contain it): a window is
       then a k x k matrix M whose columns are sorted.
    2. Sort each row of M (its i-th row holds the i-th smallest of each column): columns stay
       sorted, so M[i, j] has at least (i+1)(j+1) entries <= it and (k-i)(k-j) entries >= it.
       Entries that must lie below or above the median by these counts are dropped, and only the
       row ranks that survive are computed.
    3. Select the right rank among the surviving candidates, using the row/column order known
       among them. For k = 5: 18 + 70 + 44 = 132 elementwise min/max, against 212 for a plain
       network over 25 values, and far cheaper than torch.median over unfolded windows.
    Returns (column program, its output wires, [(row program, wanted output wires)] per row,
    selection program, its output wire)."""
    n = k * k
    m = (n + 1) // 2  # 1-based rank of the median
    below = [(i, j) for i in range(k) for j in range(k) if (k - i) * (k - j) > n - m + 1]
    cands = [(i, j) for i in range(k) for j in range(k)
             if (i + 1) * (j + 1) <= m and (k - i) * (k - j) <= n - m + 1]
    columns, col_out = _padded_network(k, [], range(k))
    rows = []
    for i in range(k):
        ranks = [j for (ci, j) in cands if ci == i]
        rows.append(_padded_network(k, [], ranks) if ranks else ((), []))
    pos = {c: t for t, c in enumerate(cands)}
    chains = [[pos[(i, j)] for j in range(k) if (i, j) in pos] for i in range(k)]
    chains += [[pos[(i, j)] for i in range(k) if (i, j) in pos] for j in range(k)]
    select, (out,) = _padded_network(len(cands), chains, [m - len(below) - 1])
    return columns, col_out, rows, select, out


def _run_program(wires: list, program) -> list:
    """Apply a min/max program to a list of tensors (in place on the list)."""
    for step in program:
        if step[0] == "swap":
            _, a, b = step
            wires[a], wires[b] = wires[b], wires[a]
            continue
        a, b, want_min, want_max = step
        x, y = wires[a], wires[b]
        if want_min:
            wires[a] = torch.minimum(x, y)
        if want_max:
            wires[b] = torch.maximum(x, y)
    return wires


class TorchTVL1:
    """Batched TV-L1 optical flow; `calc(prev, nxt)` mirrors OpenCV's `calc(prev, next)`."""

    def __init__(self, tau=0.25, lambda_=0.15, theta=0.3, nscales=5, warps=5, epsilon=0.01,
                 inner_iterations=30, outer_iterations=10, scale_step=0.8, gamma=0.0,
                 median_filtering=5, device="cpu", dtype=torch.float32,
                 remap_subpixel_bits="auto", sync_every=None, compact_ratio=0.75,
                 cpu_chunk_pixels=250_000):
        if gamma != 0:
            raise NotImplementedError("gamma != 0 (illumination term) is not implemented")
        if nscales < 1:
            raise ValueError("nscales must be >= 1")
        if median_filtering > 1 and median_filtering % 2 == 0:
            raise ValueError("median_filtering must be odd")
        self.tau = float(tau)
        self.lambda_ = float(lambda_)
        self.theta = float(theta)
        self.nscales = int(nscales)
        self.warps = int(warps)
        self.epsilon = float(epsilon)
        self.inner_iterations = int(inner_iterations)
        self.outer_iterations = int(outer_iterations)
        self.scale_step = float(scale_step)
        self.gamma = float(gamma)
        self.median_filtering = int(median_filtering)
        self.device = torch.device(device)
        self.dtype = dtype
        if remap_subpixel_bits == "auto":
            remap_subpixel_bits = _opencv_subpixel_bits()
        self.remap_subpixel_bits = remap_subpixel_bits
        if sync_every is None:
            sync_every = 1 if self.device.type == "cpu" else 5
        self.sync_every = max(1, int(sync_every))
        self.compact_ratio = float(compact_ratio)
        self.last_compactions = 0  # working-set shrinks during the last calc (tests, tuning)
        # On CPU a batch is solved in chunks of about this many pixels per image stack: a working
        # set that stays in cache runs up to 1.8x faster than one big batch (224 px: 4 pairs per
        # chunk). 0 or None: one batch, as always on CUDA.
        self.cpu_chunk_pixels = int(cpu_chunk_pixels or 0)
        self._axis_cache: dict = {}

    # ------------------------------------------------------------------ public API
    def calc(self, prev, nxt) -> np.ndarray:
        """prev, nxt: uint8 or float (0..255) grey images [B, H, W] or [H, W], numpy or torch.
        -> float32 numpy [B, H, W, 2] (or [H, W, 2]): displacement (x, y) in pixels from prev to nxt."""
        flow, single = self._calc(prev, nxt)
        out = flow.permute(0, 2, 3, 1).to(torch.float32).cpu().numpy()
        return out[0] if single else out

    def calc_tensor(self, prev, nxt) -> torch.Tensor:
        """As `calc`, but returns a float tensor [B, H, W, 2] (or [H, W, 2]) left on `self.device`."""
        flow, single = self._calc(prev, nxt)
        out = flow.permute(0, 2, 3, 1)
        return out[0] if single else out

    # ------------------------------------------------------------------ driver
    @torch.no_grad()
    def _calc(self, prev, nxt) -> tuple[torch.Tensor, bool]:
        """Checks and converts the input; solves it in one batch, or in cache-sized chunks on CPU."""
        i0, single0 = _as_batch(prev, "prev")
        i1, single1 = _as_batch(nxt, "nxt")
        if i0.shape != i1.shape:
            raise ValueError(f"prev and nxt differ in shape: {tuple(i0.shape)} vs {tuple(i1.shape)}")
        _, h, w = i0.shape
        if h < 3 or w < 3:
            raise ValueError("images must be at least 3x3")
        # uint8 grey levels and float 0..255 both become float grey levels unchanged
        i0 = i0.to(device=self.device, dtype=self.dtype)
        i1 = i1.to(device=self.device, dtype=self.dtype)
        self.last_compactions = 0
        chunk = i0.shape[0]
        if self.device.type == "cpu" and self.cpu_chunk_pixels:
            chunk = max(1, self.cpu_chunk_pixels // (h * w))
        parts = [self._solve(i0[k:k + chunk], i1[k:k + chunk]) for k in range(0, i0.shape[0], chunk)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), single0 and single1

    def _solve(self, i0: torch.Tensor, i1: torch.Tensor) -> torch.Tensor:
        """Coarse to fine over the pyramid; i0, i1 float [B, H, W] on the device -> u [B, 2, H, W]."""
        pyr0, pyr1 = [i0], [i1]
        for _ in range(1, self.nscales):
            ph, pw = pyr0[-1].shape[-2:]
            nh, nw = round(ph * self.scale_step), round(pw * self.scale_step)
            if nh < 16 or nw < 16:
                break
            step = 1.0 / self.scale_step
            pyr0.append(self._resize(pyr0[-1], nh, nw, step, step))
            pyr1.append(self._resize(pyr1[-1], nh, nw, step, step))

        b = i0.shape[0]
        ch, cw = pyr0[-1].shape[-2:]
        u = torch.zeros(b, 2, ch, cw, device=self.device, dtype=self.dtype)
        for s in range(len(pyr0) - 1, -1, -1):
            u = self._one_level(pyr0[s], pyr1[s], u)
            if s == 0:
                break
            fh, fw = pyr0[s - 1].shape[-2:]
            sy = 1.0 / (fh / ch)  # OpenCV derives the step from the inverse ratio, in double
            sx = 1.0 / (fw / cw)
            u = self._resize(u, fh, fw, sy, sx) * (1.0 / self.scale_step)
            ch, cw = fh, fw
        return u

    # ------------------------------------------------------------------ building blocks
    def _axis(self, n_in: int, n_out: int, step: float):
        """Indices and weights of a bilinear resize along one axis (half-pixel centres, clamped)."""
        key = (n_in, n_out, step)
        hit = self._axis_cache.get(key)
        if hit is None:
            pos = ((np.arange(n_out, dtype=np.float64) + 0.5) * step - 0.5).astype(np.float32)
            lo = np.floor(pos)
            frac = (pos - lo).astype(np.float32)
            lo = lo.astype(np.int64)
            before = lo < 0
            lo[before], frac[before] = 0, 0.0
            after = lo >= n_in - 1
            lo[after], frac[after] = n_in - 1, 0.0
            hi = np.minimum(lo + 1, n_in - 1)
            hit = tuple(torch.from_numpy(a).to(self.device) for a in (lo, hi, 1.0 - frac, frac))
            hit = hit[:2] + tuple(t.to(self.dtype) for t in hit[2:])
            self._axis_cache[key] = hit
        return hit

    def _resize(self, x: torch.Tensor, out_h: int, out_w: int, step_y: float, step_x: float) -> torch.Tensor:
        """Bilinear resize of the last two dims, rows first then columns (as OpenCV's two passes)."""
        lo, hi, w_lo, w_hi = self._axis(x.shape[-1], out_w, step_x)
        x = x.index_select(-1, lo) * w_lo + x.index_select(-1, hi) * w_hi
        lo, hi, w_lo, w_hi = self._axis(x.shape[-2], out_h, step_y)
        return x.index_select(-2, lo) * w_lo[:, None] + x.index_select(-2, hi) * w_hi[:, None]

    @staticmethod
    def _centred_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centred differences /2 inside, one-sided differences /2 on the borders; img [B, H, W]."""
        dx = torch.empty_like(img)
        dx[..., 1:-1] = 0.5 * (img[..., 2:] - img[..., :-2])
        dx[..., 0] = 0.5 * (img[..., 1] - img[..., 0])
        dx[..., -1] = 0.5 * (img[..., -1] - img[..., -2])
        dy = torch.empty_like(img)
        dy[..., 1:-1, :] = 0.5 * (img[..., 2:, :] - img[..., :-2, :])
        dy[..., 0, :] = 0.5 * (img[..., 1, :] - img[..., 0, :])
        dy[..., -1, :] = 0.5 * (img[..., -1, :] - img[..., -2, :])
        return dx, dy

    @staticmethod
    def _cubic_weights(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Keys cubic convolution (a = -0.75) weights of the taps at offsets -1, 0, 1, 2 for fraction t."""
        a = -0.75
        s = 1.0 - t
        w0 = ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a
        w1 = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
        w2 = ((a + 2.0) * s - (a + 3.0)) * s * s + 1.0
        return w0, w1, w2, 1.0 - w0 - w1 - w2

    def _warp(self, stack: torch.Tensor, u: torch.Tensor, base_x: torch.Tensor, base_y: torch.Tensor) -> torch.Tensor:
        """Sample `stack` [B, C, H, W] at (x + u1, y + u2), bicubic, taps outside the image count as 0.

        Written with gathers rather than grid_sample: grid_sample's normalised coordinates put a
        zero flow a few 1e-5 px off the pixel centres, which near the borders (zero padding) is
        enough to start a drift that OpenCV never sees."""
        b, c, h, w = stack.shape
        px = base_x + u[:, 0]
        py = base_y + u[:, 1]
        if self.remap_subpixel_bits is not None:
            q = float(1 << int(self.remap_subpixel_bits))
            px = torch.round(px * q) / q
            py = torch.round(py * q) / q
        fx = torch.floor(px)
        fy = torch.floor(py)
        wxs = self._cubic_weights(px - fx)
        wys = self._cubic_weights(py - fy)
        # pad with 4 zeros each side and clamp the base tap: a base beyond the clamp range only
        # ever reaches zeros anyway, and so it still does after clamping
        pad = 4
        wp = w + 2 * pad
        flat = F.pad(stack, (pad, pad, pad, pad)).reshape(b, c, -1)
        x0 = torch.clamp(fx, -3, w + 1).to(torch.int64) + (pad - 1)
        y0 = torch.clamp(fy, -3, h + 1).to(torch.int64) + (pad - 1)
        out = torch.zeros(b, c, h * w, device=stack.device, dtype=stack.dtype)
        for j in range(4):
            row = ((y0 + j) * wp).reshape(b, 1, -1)
            for i in range(4):
                idx = (row + (x0 + i).reshape(b, 1, -1)).expand(b, c, -1)
                weight = (wys[j] * wxs[i]).reshape(b, 1, -1)
                out += weight * torch.gather(flat, 2, idx)
        return out.reshape(b, c, h, w)

    def _median(self, u: torch.Tensor) -> torch.Tensor:
        """k x k median of each flow component, borders replicated (OpenCV medianBlur); u [B, 2, H, W]."""
        k = self.median_filtering
        r = k // 2
        h, w = u.shape[-2:]
        columns, col_out, rows, select, out = _median_programs(k)
        padded = F.pad(u, (r, r, r, r), mode="replicate")
        wires = _run_program([padded[..., dy:dy + h, :] for dy in range(k)] + [None] * k, columns)
        cands = []
        for i, (program, outputs) in enumerate(rows):
            if outputs:
                ranked = wires[col_out[i]]  # i-th smallest of each vertical run, [..., H, W + 2r]
                row = _run_program([ranked[..., dx:dx + w] for dx in range(k)] + [None] * k, program)
                cands += [row[o] for o in outputs]
        return _run_program(cands + [None] * len(cands), select)[out]

    # ------------------------------------------------------------------ one pyramid level
    def _one_level(self, i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        b, h, w = i0.shape
        dev, dt = i0.device, i0.dtype
        i1x, i1y = self._centred_gradient(i1)
        stack = torch.stack((i1, i1x, i1y), dim=1)  # [B, 3, H, W]
        base_y, base_x = torch.meshgrid(torch.arange(h, device=dev, dtype=dt),
                                        torch.arange(w, device=dev, dtype=dt), indexing="ij")
        px = torch.zeros(b, 2, h, w, device=dev, dtype=dt)  # dual variable, x parts (for u1, u2)
        py = torch.zeros(b, 2, h, w, device=dev, dtype=dt)  # dual variable, y parts
        for _ in range(self.warps):
            warped = self._warp(stack, u, base_x, base_y)
            i1w, ig = warped[:, 0], warped[:, 1:]  # ig: [B, 2, H, W] = (I1w_x, I1w_y)
            grad = (ig * ig).sum(dim=1, keepdim=True)
            rho_c = (i1w - ig[:, 0] * u[:, 0] - ig[:, 1] * u[:, 1] - i0).unsqueeze(1)
            grad_safe = torch.where(grad > _FLT_EPSILON, grad, torch.full_like(grad, 1e-30))
            u, px, py = self._iterate(u, px, py, ig, grad_safe, rho_c)
        return u

    def _iterate(self, u, px, py, ig, grad_safe, rho_c):
        """The outer/inner iterations of one warp. Pairs that meet the stopping test are frozen
        (masked) and, once at most `compact_ratio` of the working set is still active, dropped from
        it (their state written back), so that converged pairs cost nothing afterwards."""
        b, _, h, w = u.shape
        eps_scaled = float(np.float32(self.epsilon * self.epsilon * h * w))
        lt = float(np.float32(self.lambda_ * self.theta))
        taut = float(np.float32(self.tau / self.theta))
        theta = float(np.float32(self.theta))
        exact_sync = self.sync_every == 1

        rows = None  # batch rows of the working set; None: all of them, in order
        full = None  # (u, px, py) of the whole batch once the working set is a subset
        n = b
        active = torch.ones(n, device=u.device, dtype=torch.bool)
        all_active = exact_sync  # on the host: every working pair known to be still iterating
        gx = torch.zeros_like(u)  # forward differences; last column / row stay 0
        gy = torch.zeros_like(u)
        step = 0
        finished = False
        for _outer in range(self.outer_iterations):
            if self.median_filtering > 1:
                med = self._median(u)
                u = med if all_active else torch.where(active.view(n, 1, 1, 1), med, u)
            for _inner in range(self.inner_iterations):
                # threshold step: v = u + clamp(-rho / |grad I1w|^2, -lt, lt) * grad I1w
                rho = torch.addcmul(rho_c, ig[:, :1], u[:, :1]).addcmul_(ig[:, 1:], u[:, 1:])
                coef = rho.div_(grad_safe).neg_().clamp_(-lt, lt)
                v = torch.addcmul(u, coef, ig)
                # u = v + theta * div p, backward differences, zero before the first row / column
                div = px + py
                div[..., 1:] -= px[..., :-1]
                div[..., 1:, :] -= py[..., :-1, :]
                u_new = v.add_(div, alpha=theta)
                diff = u_new - u
                err = diff.mul_(diff).sum(dim=(1, 2, 3))
                # dual step on the forward differences of the new u
                torch.sub(u_new[..., 1:], u_new[..., :-1], out=gx[..., :-1])
                torch.sub(u_new[..., 1:, :], u_new[..., :-1, :], out=gy[..., :-1, :])
                norm = torch.hypot(gx, gy).mul_(taut).add_(1.0)
                px_new = torch.add(px, gx, alpha=taut).div_(norm)
                py_new = torch.add(py, gy, alpha=taut).div_(norm)
                if all_active:
                    u, px, py = u_new, px_new, py_new
                else:  # pairs that converged earlier in this warp keep their state
                    a4 = active.view(n, 1, 1, 1)
                    u = torch.where(a4, u_new, u)
                    px = torch.where(a4, px_new, px)
                    py = torch.where(a4, py_new, py)
                active = active & (err > eps_scaled)
                step += 1
                if step % self.sync_every:
                    all_active = False
                    continue
                n_active = int(active.sum())  # host sync
                if n_active == 0:
                    finished = True
                    break
                if n_active <= self.compact_ratio * n:
                    keep = torch.nonzero(active).squeeze(1)
                    self.last_compactions += 1
                    if rows is None:
                        full = (u, px, py)
                        rows = keep
                    else:
                        for dst, src in zip(full, (u, px, py)):
                            dst.index_copy_(0, rows, src)
                        rows = rows.index_select(0, keep)
                    u, px, py, ig, grad_safe, rho_c = (
                        t.index_select(0, keep) for t in (u, px, py, ig, grad_safe, rho_c))
                    n = n_active
                    active = torch.ones(n, device=u.device, dtype=torch.bool)
                    gx = torch.zeros_like(u)
                    gy = torch.zeros_like(u)
                all_active = exact_sync and n_active == n
            if finished or not bool(active.any()):
                break
        if rows is None:
            return u, px, py
        for dst, src in zip(full, (u, px, py)):
            dst.index_copy_(0, rows, src)
        return full
