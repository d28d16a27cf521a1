"""Flow stage: TV-L1 optical flow for each picked frame, quantised to uint8.

`python -m extract.flow --manifest M --work W [--bound B] [--flow-backend opencv|torch|auto]
[--batch-videos N]`
writes `W/flow/<key>.npz` with `flow`, uint8 `[T, S, S, 2]` (x then y), deflate-compressed,
and `bound`. Flow k is computed on grayscale between picked frame k and the source frame that
follows it (not the next *picked* frame), on the frames stage's geometry, so displacements are
per source frame as I3D's flow stream expects.

Quantisation: q = round((f + bound) * 255 / (2 * bound)), clipped to 0..255; `dequantise`
inverts it to within bound/255 px. Zero flow lands on 128 (127.5 rounded).
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

import numpy as np

from extract import cli, clip, stage
from extract.layout import Work
from extract.manifest import Video
from extract.options import option

NAME, SUFFIX = "flow", ".npz"
BACKENDS = ("opencv", "torch", "auto")


@dataclasses.dataclass(frozen=True)
class FlowSettings(clip.ClipSettings):
    bound: float = option(20.0, "clip displacements to +-bound pixels before quantising to uint8")
    backend: str = option("opencv", "opencv: OpenCV contrib DualTVL1 on CPU; torch: batched PyTorch TV-L1; "
                                    "auto: torch when CUDA is available", choices=BACKENDS, flag="--flow-backend")
    batch_pairs: int = option(64, "frame pairs per torch solver call")
    batch_videos: int = option(0, "videos whose pairs share torch solver calls (0: 8 with torch on CUDA, else 1)")

    def __post_init__(self):
        super().__post_init__()
        if self.backend not in BACKENDS:
            raise ValueError(f"flow backend must be one of {BACKENDS}, got {self.backend!r}")


def quantise(flow: np.ndarray, bound: float) -> np.ndarray:
    """Displacements in pixels -> uint8, clipped at +-bound."""
    q = np.round((np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound)))
    return q.astype(np.uint8)


def dequantise(q: np.ndarray, bound: float) -> np.ndarray:
    return q.astype(np.float32) * np.float32(2 * bound / 255.0) - np.float32(bound)


def resolve_backend(name: str) -> str:
    """`auto` is torch when CUDA is available, else OpenCV (the reference implementation)."""
    if name != "auto":
        return name
    try:
        import torch
    except ImportError:
        return "opencv"
    return "torch" if torch.cuda.is_available() else "opencv"


@functools.lru_cache(maxsize=1)
def opencv_solver():
    """One DualTVL1 solver per worker process, OpenCV's default parameters, as the published preprocessing used."""
    import cv2

    return cv2.optflow.DualTVL1OpticalFlow_create()


@functools.lru_cache(maxsize=1)
def torch_solver():
    """One batched TV-L1 per worker process, on CUDA when available.

    On CPU torch is capped at the thread share the stage gave OpenCV: torch is first imported
    here, after the stage set its limits, so it would otherwise start one thread per core in every
    worker (oversubscribed; with many small tensors that is several times slower)."""
    import cv2
    import torch

    from extract.tvl1_torch import TorchTVL1

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cv2.getNumThreads())))
        return TorchTVL1(device="cpu")
    return TorchTVL1(device="cuda")


def compute_pairs(first: np.ndarray, second: np.ndarray, backend: str,
                  batch_pairs: int = FlowSettings.batch_pairs) -> np.ndarray:
    """TV-L1 from first[i] to second[i] (uint8 grayscale `[P, H, W]`) -> float32 `[P, H, W, 2]`."""
    if len(first) == 0:
        return np.zeros((*first.shape, 2), np.float32)
    if backend == "torch":
        solver = torch_solver()
        return np.concatenate([solver.calc(first[i:i + batch_pairs], second[i:i + batch_pairs])
                               for i in range(0, len(first), batch_pairs)])
    solver = opencv_solver()
    return np.stack([solver.calc(a, b, None) for a, b in zip(first, second)])


@dataclasses.dataclass
class _Pairs:
    """One video's decoded work: the (from, to) source-frame pairs to solve and their images."""
    picks: np.ndarray
    partners: np.ndarray
    pairs: list[tuple[int, int]]
    first: np.ndarray   # uint8 [P, S, S]
    second: np.ndarray


def _decode_pairs(video: Video, settings: FlowSettings) -> _Pairs:
    picks, frames, partners = clip.decode_picked(video, settings, with_partners=True, gray=True)
    # Distinct (from, to) pairs only: looping clips repeat picks.
    pairs = sorted({(int(p), int(q)) for p, q in zip(picks, partners) if q >= 0})
    shape = (0, settings.size, settings.size)
    # A pick on the last frame has no successor: use the step into it (partner is before it).
    first = np.stack([frames[min(p, q)] for p, q in pairs]) if pairs else np.zeros(shape, np.uint8)
    second = np.stack([frames[max(p, q)] for p, q in pairs]) if pairs else np.zeros(shape, np.uint8)
    return _Pairs(np.asarray(picks), np.asarray(partners), pairs, first, second)


def _per_pick(work: _Pairs, computed: np.ndarray, settings: FlowSettings) -> np.ndarray:
    """Solved pairs -> float flow `[T, S, S, 2]`, one per pick (zero where a pick has no pair)."""
    flows = dict(zip(work.pairs, computed))
    zero = np.zeros((settings.size, settings.size, 2), np.float32)
    return np.stack([flows.get((int(p), int(q)), zero) for p, q in zip(work.picks, work.partners)])


def clip_flow(video: Video, settings: FlowSettings) -> np.ndarray:
    """Float flow `[T, S, S, 2]` of one video, per source frame."""
    work = _decode_pairs(video, settings)
    return _per_pick(work, compute_pairs(work.first, work.second, resolve_backend(settings.backend),
                                         settings.batch_pairs), settings)


def _write(out: Path, flow: np.ndarray, settings: FlowSettings) -> None:
    q = quantise(flow, settings.bound)
    stage.write_output(out, lambda f: np.savez_compressed(f, flow=q, bound=np.float32(settings.bound)))


def process(video: Video, out: Path, settings: FlowSettings) -> str | None:
    _write(out, clip_flow(video, settings), settings)
    return None


def process_group(items, settings: FlowSettings) -> list:
    """Several videos at once: their pairs go through the torch solver together, `batch_pairs`
    at a time across video boundaries, so a GPU sees full batches instead of one video's ~79
    pairs. A video that fails to decode or write fails alone (its exception is its outcome)."""
    outcomes: list = [None] * len(items)
    decoded = []
    for i, (video, out) in enumerate(items):
        try:
            with stage.for_output(out):
                decoded.append((i, out, _decode_pairs(video, settings)))
        except Exception as exc:  # this video's failure, recorded by the stage runner
            outcomes[i] = exc
    if not decoded:
        return outcomes
    computed = compute_pairs(np.concatenate([w.first for _, _, w in decoded]),
                             np.concatenate([w.second for _, _, w in decoded]),
                             resolve_backend(settings.backend), settings.batch_pairs)
    offset = 0
    for i, out, work in decoded:
        mine = computed[offset:offset + len(work.pairs)]
        offset += len(work.pairs)
        try:
            with stage.for_output(out):
                _write(out, _per_pick(work, mine, settings), settings)
        except Exception as exc:
            outcomes[i] = exc
    return outcomes


def group_size(settings: FlowSettings) -> int:
    """Videos per worker call: `batch_videos`, or by default 8 when the torch solver runs on CUDA
    (batching helps a GPU; on a CPU the solver works in cache-sized chunks anyway)."""
    if settings.batch_videos:
        return settings.batch_videos
    if resolve_backend(settings.backend) != "torch":
        return 1
    import torch

    return 8 if torch.cuda.is_available() else 1


STAGE = stage.Stage(NAME, SUFFIX, process, upstream=("frames",), process_group=process_group, group_size=group_size,
                    settings_type=FlowSettings)


def load(work, video_id: str) -> np.ndarray:
    """The stored flow of one video: uint8 `[T, S, S, 2]` (see `dequantise`)."""
    path = Work(work).output(NAME, video_id, SUFFIX)
    if not path.is_file():
        raise FileNotFoundError(f"no flow for {video_id!r} in {Path(work) / NAME} (run the flow stage first)")
    with np.load(path) as z:
        return z["flow"]


def main(argv=None) -> int:
    args = stage.stage_parser(STAGE, "TV-L1 optical flow per picked frame, quantised to uint8.").parse_args(argv)
    return cli.run(lambda: stage.run_command(STAGE, args), verbose=args.verbose, level=stage.LOG_LEVEL)


if __name__ == "__main__":
    # Run through the importable module so worker processes can unpickle the stage by name.
    from extract.flow import main as _main

    sys.exit(_main())
