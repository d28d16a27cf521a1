"""`make gpu-check`: the CUDA paths measured in one run, ready for the first GPU lent.

    python -m benchmarks.gpu_check [--out work/gpu-check] [--budget 300] [--manifest M] [--videos 60]

No CUDA path of this project had run when it was written, so this one script checks all of them
at once, in at most `--budget` seconds (5 minutes by default, on one GPU), and writes
`OUT/report.json` and `OUT/report.md`:

1. **TV-L1 in PyTorch on CUDA** against OpenCV's `DualTVL1OpticalFlow` on 32 frame pairs of the
   sample's videos (the flow stage's own pairs: picked frame and the source frame after it, grey,
   224x224): mean end-point error and the share of quantised values (bound 20) within one grey
   level (targets: at most 0.15 px, at least 95 %, as the CPU benchmark); then pairs per second
   at batch sizes 64 and 256 (the pairs repeated to fill the batch).
2. **Each backbone on CUDA** against the CPU on the same seeded inputs of the real shapes (I3D
   79x224x224 clips, VGGish 15 examples, ResNet-18 79 frames, captions): in float32 with TF32
   switched off (relative difference, target 1e-4) and under the autocast the feature stage uses
   (bfloat16, or float16 without bf16; target 1e-2); clips (videos) per second in both.
3. **The stages end to end** on the sample as `make frames flow audio features DEVICE=cuda
   FLOW_BACKEND=torch` runs them: exit codes and seconds per video of each step.

The relative difference of a video is `||gpu - cpu|| / ||cpu||` over its whole cached sequence;
the figure reported is the worst video's. A step that would start past the budget is skipped
and marked so; a step that fails is recorded with its error and the others still run.

Without CUDA it refuses at once: one line `error: ...`, exit 2. The measuring functions take a
`device` and sizes, so the tests run them on the CPU on tiny inputs (`tests/test_gpu_check.py`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from extract import audio, cli, flow, frames, sample
from extract.clip import ClipSettings
from extract.manifest import Video, read_manifest, write_manifest
from features import backbones, modalities

TARGETS = {"flow_epe_px": 0.15, "flow_within_one_level": 0.95, "float32_rel": 1e-4, "autocast_rel": 1e-2}
FLOW_BOUND = flow.FlowSettings.bound
# Items per video of each backbone's real input, and how many videos each comparison and timing uses.
COMPARE_VIDEOS, TIMED_VIDEOS = 2, 16


class NoCuda(cli.UserError):
    """The check needs a CUDA device."""


def require_cuda(device: str) -> None:
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise NoCuda(f"make gpu-check needs a CUDA GPU, and torch {torch.__version__} sees none here "
                     f"(torch.cuda.is_available() is False); run it on a machine with one")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def exact_float32():
    """True float32 on CUDA: TF32 matmuls and convolutions off (they round inputs to 10 bits)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def relative_difference(got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """The worst video's `||got - ref|| / ||ref||` (0 when both are zero)."""
    worst = 0.0
    for a, b in zip(got, ref, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            return float("inf")
        norm = np.linalg.norm(b)
        diff = np.linalg.norm(a - b)
        worst = max(worst, float(diff / norm) if norm else (0.0 if diff == 0 else float("inf")))
    return worst


# ----------------------------------------------------------------------------- 1. TV-L1


def sample_pairs(videos: Sequence[Video], count: int, size: int, per_video: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """`count` grey frame pairs `[count, size, size]` as the flow stage makes them, `per_video`
    from each video in turn (a video that cannot be decoded is passed over)."""
    settings = flow.FlowSettings(num_frames=per_video, size=size)
    first, second = [], []
    for video in videos:
        try:
            pairs = flow._decode_pairs(video, settings)
        except Exception:  # noqa: BLE001  a broken sample video: take the next one
            continue
        first.extend(pairs.first)
        second.extend(pairs.second)
        if len(first) >= count:
            break
    if len(first) < count:
        raise RuntimeError(f"only {len(first)} frame pairs could be decoded from {len(videos)} videos, {count} needed")
    return np.stack(first[:count]), np.stack(second[:count])


def flow_check(first: np.ndarray, second: np.ndarray, device: str, batches: Sequence[int] = (64, 256)) -> dict:
    """Torch TV-L1 on `device` against OpenCV on the same pairs; pairs per second per batch size."""
    from extract.tvl1_torch import TorchTVL1

    dev = torch.device(device)
    reference = np.stack([flow.opencv_solver().calc(a, b, None) for a, b in zip(first, second)])
    solver = TorchTVL1(device=dev)
    solver.calc(first[:1, :32, :32], second[:1, :32, :32])  # warm-up: CUDA context, kernels
    _sync(dev)
    got = solver.calc(first, second)
    epe = np.sqrt(((got - reference) ** 2).sum(-1))
    q_got, q_ref = (flow.quantise(f, FLOW_BOUND).astype(np.int16) for f in (got, reference))
    result = {"pairs": int(len(first)), "size": int(first.shape[-1]), "device": str(dev),
              "mean_epe_px": float(epe.mean()), "within_one_level": float((np.abs(q_got - q_ref) <= 1).mean()),
              "pairs_per_second": {}}
    for batch in batches:
        reps = -(-batch // len(first))
        a, b = np.concatenate([first] * reps)[:batch], np.concatenate([second] * reps)[:batch]
        _sync(dev)
        t = time.perf_counter()
        solver.calc(a, b)
        _sync(dev)
        result["pairs_per_second"][str(batch)] = batch / (time.perf_counter() - t)
    result["pass"] = (result["mean_epe_px"] <= TARGETS["flow_epe_px"]
                      and result["within_one_level"] >= TARGETS["flow_within_one_level"])
    return result


# ----------------------------------------------------------------------------- 2. backbones


def backbone_inputs(modality: str, videos: int, frames_: int = ClipSettings.num_frames, size: int = ClipSettings.size, seed: int = 0) -> list:
    """Seeded inputs of `videos` videos in the model's input range: the registry's example of
    the modality (`Modality.example`), clips of `frames_` frames of `size` px where it applies."""
    return modalities.get(modality).example(videos, frames_, size, seed)


def _rate(backbone: backbones.Backbone, items: list) -> float:
    backbone.embed(items[:1])  # warm-up: kernels, autotuning
    _sync(backbone.device)
    t = time.perf_counter()
    backbone.embed(items)       # returns CPU arrays: synchronised
    return len(items) / (time.perf_counter() - t)


def backbone_check(modality: str, device: str, weights: str = "random", compare: int = COMPARE_VIDEOS,
                   timed: int = TIMED_VIDEOS, **shape) -> dict:
    """One backbone on `device` (float32, then autocast) against the CPU; videos per second."""
    items = backbone_inputs(modality, max(compare, timed), **shape)
    load = lambda dev, amp: backbones.load_backbone(modality, weights=weights, device=dev, amp=amp)  # noqa: E731
    with exact_float32():
        reference = load("cpu", False).embed(items[:compare])
        fp32 = load(device, False)
        got32 = fp32.embed(items[:compare])
        rate32 = _rate(fp32, items[:timed])
    del fp32
    amp = load(device, True)
    got_amp = amp.embed(items[:compare])
    rate_amp = _rate(amp, items[:timed])
    result = {"modality": modality, "network": modalities.get(modality).network.name, "device": device,
              "weights": "random" if amp.checkpoint == "random" else amp.checkpoint,
              "autocast_dtype": str(amp.amp_dtype).replace("torch.", ""),
              "input": _describe(items[0]), "compared_videos": compare, "timed_videos": timed,
              "float32_rel": relative_difference(got32, reference), "autocast_rel": relative_difference(got_amp, reference),
              "float32_videos_per_second": rate32, "autocast_videos_per_second": rate_amp}
    result["pass"] = result["float32_rel"] <= TARGETS["float32_rel"] and result["autocast_rel"] <= TARGETS["autocast_rel"]
    return result


def _describe(item) -> str:
    return f"[{', '.join(map(str, item.shape))}]" if hasattr(item, "shape") else f"{len(item)} caption(s)"


# ----------------------------------------------------------------------------- 3. end to end


def stages_check(manifest: Path, work: Path, device: str, num_frames: int = ClipSettings.num_frames,
                 size: int = ClipSettings.size, jobs: int = 0, weights: str = "random") -> dict:
    """frames, flow (torch TV-L1), audio, then every default modality's features on `device`,
    as `make frames flow audio features DEVICE=cuda FLOW_BACKEND=torch` runs them."""
    from features import extract as feature_stage

    shutil.rmtree(work, ignore_errors=True)
    common = ["--manifest", str(manifest), "--work", str(work), "--jobs", str(jobs)]
    geometry = ["--num-frames", str(num_frames), "--size", str(size)]
    videos = len(read_manifest(manifest))
    steps: list[tuple[str, Callable[[], int]]] = [
        ("frames stage", lambda: frames.main(common + geometry)),
        ("flow stage (torch TV-L1)", lambda: flow.main(common + geometry + ["--flow-backend", "torch"])),
        ("audio stage", lambda: audio.main(common)),
    ]
    for m in modalities.names(default_only=True):
        steps.append((f"{m} features", lambda m=m: feature_stage.main(
            ["--modality", m, "--manifest", str(manifest), "--work", str(work), "--weights", weights,
             "--device", device])))
    rows = []
    for name, run in steps:
        t = time.perf_counter()
        code = run()
        seconds = time.perf_counter() - t
        rows.append({"step": name, "exit_code": code, "seconds": seconds, "seconds_per_video": seconds / max(1, videos)})
    return {"videos": videos, "num_frames": num_frames, "size": size, "device": device, "rows": rows,
            "pass": all(r["exit_code"] in (cli.EXIT_OK, cli.EXIT_SOME_FAILED) for r in rows)}


# ----------------------------------------------------------------------------- the run and its report


def run_checks(device: str, out: Path, videos: Sequence[Video], manifest: Path, budget: float = 300.0,
               pairs: int = 32, size: int = ClipSettings.size, batches: Sequence[int] = (64, 256),
               num_frames: int = ClipSettings.num_frames, weights: str = "random", jobs: int = 0,
               backbone_shape: dict | None = None, timed: int = TIMED_VIDEOS) -> dict:
    """Every check in turn within `budget` seconds; returns the report (also written to `out`)."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": device, "environment": environment(device), "targets": TARGETS, "budget_seconds": budget,
                    "flow": None, "backbones": [], "stages": None, "skipped": [], "errors": []}

    def step(name: str, fn: Callable[[], object]):
        if time.perf_counter() - started >= budget:
            report["skipped"].append(f"{name}: the {budget:.0f} s budget was spent")
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001  recorded; the other checks still run
            report["errors"].append(f"{name}: {type(exc).__name__}: {exc}".replace("\n", " "))
            traceback.print_exc(file=sys.stderr)
            return None

    report["flow"] = step("TV-L1", lambda: flow_check(*sample_pairs(videos, pairs, size), device, batches))
    for m in modalities.names(default_only=True):
        result = step(f"{m} backbone", lambda m=m: backbone_check(m, device, weights, timed=timed,
                                                                  **(backbone_shape or {})))
        if result is not None:
            report["backbones"].append(result)
    report["stages"] = step("stages end to end", lambda: stages_check(manifest, out / "work", device, num_frames,
                                                                       size, jobs, weights))
    report["seconds"] = time.perf_counter() - started
    parts = [report["flow"], *report["backbones"], report["stages"]]
    report["pass"] = all(p is not None and p["pass"] for p in parts) and not report["errors"] and not report["skipped"]
    write_report(report, out)
    return report


def environment(device: str) -> dict:
    import cv2

    env = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(), "cpus": os.cpu_count(),
           "python": platform.python_version(), "torch": torch.__version__, "opencv": cv2.__version__,
           "load_average": list(os.getloadavg())}
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
        env["bf16"] = torch.cuda.is_bf16_supported()
    return env


def _ok(flag: bool) -> str:
    return "pass" if flag else "**FAIL**"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# GPU check ({report['device']}: {env.get('gpu', 'no GPU')})", "",
             f"{env['date']}, torch {env['torch']}, OpenCV {env['opencv']}, {env['cpus']} cores, "
             f"{report.get('seconds', 0):.0f} s of a {report['budget_seconds']:.0f} s budget. "
             f"Overall: {_ok(report['pass'])}.", ""]
    f = report["flow"]
    if f:
        rates = ", ".join(f"{v:.1f} pairs/s at batch {k}" for k, v in f["pairs_per_second"].items())
        lines += ["## TV-L1 (torch on the device against OpenCV)", "",
                  f"{f['pairs']} pairs of {f['size']}x{f['size']} from the sample's videos: mean end-point error "
                  f"**{f['mean_epe_px']:.4f} px** (target <= {TARGETS['flow_epe_px']}), "
                  f"**{100 * f['within_one_level']:.2f} %** of quantised values within one grey level "
                  f"(target >= {100 * TARGETS['flow_within_one_level']:.0f} %): {_ok(f['pass'])}. Speed: {rates}.", ""]
    if report["backbones"]:
        lines += ["## Backbones (device against CPU, same inputs)", "",
                  "| modality | input per video | float32 rel. diff (<= 1e-4) | autocast rel. diff (<= 1e-2) | "
                  "videos/s float32 | videos/s autocast | |", "|---|---|---|---|---|---|---|"]
        for b in report["backbones"]:
            lines.append(f"| {b['modality']} | {b['input']} | {b['float32_rel']:.2e} | {b['autocast_rel']:.2e} "
                         f"({b['autocast_dtype']}) | {b['float32_videos_per_second']:.2f} | "
                         f"{b['autocast_videos_per_second']:.2f} | {_ok(b['pass'])} |")
        lines.append("")
    s = report["stages"]
    if s:
        lines += [f"## Stages end to end ({s['videos']} videos, {s['num_frames']} frames of {s['size']} px, "
                  f"device {s['device']}, flow backend torch)", "", "| step | exit | s per video |", "|---|---|---|"]
        lines += [f"| {r['step']} | {r['exit_code']} | {r['seconds_per_video']:.3f} |" for r in s["rows"]]
        lines.append("")
    for title, key in (("Skipped", "skipped"), ("Errors", "errors")):
        if report[key]:
            lines += [f"## {title}", ""] + [f"- {x}" for x in report[key]] + [""]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")


def _main(args: argparse.Namespace) -> int:
    require_cuda(args.device)
    if args.manifest:
        source = Path(args.manifest)
    else:
        if not (Path(args.sample) / "manifest.csv").is_file():
            sample.main(["--out", args.sample])
        source = Path(args.sample) / "manifest.csv"
    out = Path(args.out)
    chosen = read_manifest(source)[: args.videos]
    manifest = write_manifest(out / "manifest.csv", chosen)
    shape = {} if torch.device(args.device).type == "cuda" else {"frames_": 8, "size": 32}
    report = run_checks(args.device, out, chosen, manifest, args.budget, args.pairs, args.size,
                        [int(b) for b in args.batches.split(",")], args.num_frames, args.weights, args.jobs,
                        shape, args.timed_videos)
    print(markdown(report))
    print(f"wrote {out / 'report.json'} and report.md")
    return cli.EXIT_OK if report["pass"] else cli.EXIT_SOME_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser("python -m benchmarks.gpu_check", __doc__.split("\n\n")[0])
    parser.add_argument("--out", default="work/gpu-check")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu rehearses the script on tiny sizes)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds; later steps are skipped past it")
    parser.add_argument("--sample", default="data/sample", help="sample dataset (generated when missing)")
    parser.add_argument("--manifest", help="videos to use instead of the sample's")
    parser.add_argument("--videos", type=int, default=60, help="videos of the manifest for the end-to-end step")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--size", type=int, default=ClipSettings.size)
    parser.add_argument("--num-frames", type=int, default=ClipSettings.num_frames)
    parser.add_argument("--batches", default="64,256", help="TV-L1 batch sizes timed")
    parser.add_argument("--timed-videos", type=int, default=TIMED_VIDEOS, help="videos per backbone timing")
    parser.add_argument("--weights", default="random", help="checkpoint folder, or random (same cost)")
    parser.add_argument("--jobs", type=int, default=0, help="stage workers, as JOBS (0: all cores)")
    args = parser.parse_args(argv)
    # without CUDA, or when the check itself cannot run: one `error:` line, exit 2
    return cli.run(lambda: _main(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
