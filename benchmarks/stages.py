"""Benchmark of our extraction stages against the published DMVER preprocessing.

    python -m benchmarks.stages [--out work/bench] [--videos 4] [--quick]

Why: the toolkit claims to be faster and far smaller on disk than the published scripts while
keeping their geometry. This measures both on the same inputs, in one process, on this machine:

1. Inputs (made once, kept under OUT/inputs/<mode>/): N synthetic sample videos
   (extract.sample, 360x640) and one portrait 1080x1920 clip with audio, H.264 at about 3 Mb/s
   plus AAC, from FFmpeg's testsrc2 with temporal noise (so it costs what a real upload costs
   to decode).
2. Ours: the frames, flow (OpenCV TV-L1, default parameters) and audio stages through
   `stage.run_stage` with all cores, at the published geometry (T frames, S x S, squash).
   Seconds per video are the stage's wall time divided by the videos; MB per video is what
   the stage left on disk. The flow stage runs with the TV-L1 solver wrapped in a timer, in
   its workers, to give the share of flow time spent inside the solver.
3. Published (the DMVER release's preprocessing scripts), re-implemented here: every frame squashed to S x S and
   written with cv2.VideoWriter (mp4v); T frames picked by seeking (CAP_PROP_POS_FRAMES);
   TV-L1 with a new solver per pair between consecutive picked frames, clipped to +-15 px,
   scaled to 0..255, saved as one int64 .npy per video; one process, one video at a time.
4. The decoding time of the portrait clip through our decoder (extract.clip.decode_picked,
   best of 3), and torch vs OpenCV TV-L1 pairs/s on the CPU when extract.tvl1_torch works.

Writes OUT/report.json and OUT/report.md and prints a table of targets, figures and pass/fail.
`--quick` is a small version for the tests (1 short video, 16 frames at 112 px, a 3-s clip):
its figures are not comparable with the targets, which are meant for the full settings.
Exit code: 0 when everything was measured (targets may still fail: see the table), 1 when
some stage failed on some video (the figures would compare different work), 2 on bad arguments.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from extract import audio, cli, clip, durable, flow, frames, media, records, sample, stage
from extract.layout import file_key
from extract.manifest import Video, write_manifest
from extract.workers import default_jobs

PUBLISHED_BOUND = 15.0      # the published flow clip, in pixels
MB = 1e6                    # disk figures are in MB of 10^6 bytes (the published "63 MB")
TARGETS = {                 # name: (comparison, value), checked on the full settings
    "speed_ratio": (">=", 1.3),
    "disk_ratio": (">=", 15.0),
    "decode_seconds": ("<", 1.5),
    "solver_fraction": (">=", 0.90),
}


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    videos: int
    num_frames: int
    size: int
    clip_seconds: float
    min_seconds: float
    max_seconds: float
    torch_pairs: int


FULL = Mode("full", videos=4, num_frames=clip.ClipSettings.num_frames, size=clip.ClipSettings.size, clip_seconds=15.0,
            min_seconds=3.0, max_seconds=6.0, torch_pairs=2)
QUICK = Mode("quick", videos=1, num_frames=16, size=112, clip_seconds=3.0, min_seconds=2.0, max_seconds=2.5,
             torch_pairs=2)
CLIP_W, CLIP_H, CLIP_FPS = 1080, 1920, 30


def _say(text: str) -> None:
    print(text, flush=True)


def _bytes_in(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


# ----------------------------------------------------------------------------- inputs


def make_portrait_clip(path: Path, seconds: float, timeout: float = 300.0) -> Path:
    """A 1080x1920 H.264 (~3 Mb/s) + AAC clip whose frames carry noise, so decoding costs what it does on real uploads."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = durable.temp_path(path)
    cmd = [media.ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", f"testsrc2=size={CLIP_W}x{CLIP_H}:rate={CLIP_FPS}:duration={seconds},noise=alls=6:allf=t",
           "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}",
           "-map", "0:v:0", "-map", "1:a:0",
           "-c:v", "libx264", "-preset", "veryfast", "-b:v", "3M", "-maxrate", "3M", "-bufsize", "6M",
           "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-shortest",
           "-movflags", "+faststart", "-f", "mp4", str(tmp)]
    try:
        run = subprocess.run(cmd, capture_output=True, timeout=timeout)
        if run.returncode != 0:
            raise RuntimeError(f"FFmpeg could not make the portrait clip: {run.stderr.decode(errors='replace')[-1000:]}")
        durable.fsync_file(tmp)
        durable.publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def make_inputs(folder: Path, mode: Mode, videos: int) -> tuple[list[Video], Video]:
    """The sample videos and the portrait clip (rendered only when missing), and their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    result = []
    for k in range(videos):
        label = sample.CLASSES[k % len(sample.CLASSES)]
        plan = sample.plan_video(label, k // len(sample.CLASSES), seed=0,
                                 min_seconds=mode.min_seconds, max_seconds=mode.max_seconds)
        path = folder / f"{plan.id}.mp4"
        stamp = folder / f"{plan.id}.plan"
        if not path.is_file() or not stamp.is_file() or stamp.read_text().strip() != plan.fingerprint():
            sample.render_video(plan, path)
            stamp.write_text(plan.fingerprint() + "\n")
        result.append(Video(id=plan.id, path=str(path.resolve()), label=label, split="test"))
    seconds = mode.clip_seconds
    clip_path = make_portrait_clip(folder / f"portrait_{CLIP_W}x{CLIP_H}_{seconds:g}s.mp4", seconds)
    portrait = Video(id=f"portrait_{seconds:g}s", path=str(clip_path.resolve()), label="neutral", split="test")
    result.append(portrait)
    write_manifest(folder / "manifest.csv", result)
    return result, portrait


def describe_input(video: Video) -> dict:
    info = media.probe(video.path)
    return {"id": video.id, "path": video.path, "seconds": info.duration, "width": info.width, "height": info.height,
            "fps": info.fps, "audio": info.has_audio, "bytes": Path(video.path).stat().st_size}


# ----------------------------------------------------------------------------- ours


class _TimedSolver:
    """Stands in for the OpenCV solver inside flow.compute_pairs, adding up the seconds spent in `calc`."""

    def __init__(self, solver):
        self.solver = solver
        self.seconds = 0.0
        self.calls = 0

    def calc(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.solver.calc(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


@functools.lru_cache(maxsize=1)
def _timed_solver() -> _TimedSolver:
    solver = _TimedSolver(flow.opencv_solver())
    flow.opencv_solver = lambda: solver   # compute_pairs looks the factory up by name at each call
    return solver


def timed_flow_process(video: Video, out: Path, settings: flow.FlowSettings) -> str | None:
    """flow.process, with the time inside the TV-L1 solver and the whole call written beside the output."""
    solver = _timed_solver()
    solver.seconds, solver.calls = 0.0, 0
    started = time.perf_counter()
    note = flow.process(video, out, settings)
    total = time.perf_counter() - started
    folder = out.parent.parent / "flow_timing"
    folder.mkdir(exist_ok=True)
    record = {"id": video.id, "solver_seconds": solver.seconds, "solver_calls": solver.calls, "process_seconds": total}
    durable.atomic_write_bytes(folder / f"{out.stem}.json", json.dumps(record).encode())
    return note


TIMED_FLOW = stage.Stage(flow.NAME, flow.SUFFIX, timed_flow_process, upstream=("frames",))


def run_ours(videos: Sequence[Video], work: Path, mode: Mode, jobs: int) -> dict:
    """Frames, flow and audio stages over the inputs with all cores; seconds and MB per video."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    n = len(videos)
    geometry = dict(num_frames=mode.num_frames, size=mode.size, resize="squash")
    runs = [("frames", frames.STAGE, frames.FrameSettings(**geometry)),
            ("flow", TIMED_FLOW, flow.FlowSettings(**geometry, backend="opencv")),
            ("audio", audio.STAGE, audio.AudioSettings())]
    result: dict[str, Any] = {"jobs": jobs if jobs > 0 else default_jobs()}
    for name, st, settings in runs:
        summary = stage.run_stage(st, videos, work, settings, jobs=jobs, progress=False)
        size = _bytes_in(work / name, f"*{st.suffix}")
        result[name] = {"seconds": summary.seconds, "s_per_video": summary.seconds / n,
                        "worker_s_per_video": summary.video_seconds / max(1, summary.done),
                        "mb_per_video": size / MB / n, "bytes": size, "done": summary.done, "failed": summary.failed,
                        "failures": records.read_failures(work, name)}
        _say(f"  ours {name}: {summary.seconds:.1f} s for {n} videos ({summary.done} done, {summary.failed} failed), "
             f"{size / MB / n:.2f} MB per video")
    timings = [json.loads(p.read_text()) for p in sorted((work / "flow_timing").glob("*.json"))]
    solver = sum(t["solver_seconds"] for t in timings)
    total = sum(t["process_seconds"] for t in timings)
    result["flow"]["solver_seconds"] = solver
    result["flow"]["process_seconds"] = total
    result["flow"]["solver_fraction"] = solver / total if total > 0 else None
    result["flow"]["per_video"] = timings
    result["s_per_video"] = result["frames"]["s_per_video"] + result["flow"]["s_per_video"]
    result["mb_per_video"] = result["frames"]["mb_per_video"] + result["flow"]["mb_per_video"]
    return result


# ----------------------------------------------------------------------------- published


def _uniform_picks(n: int, count: int) -> list[int]:
    """count frame numbers spread evenly over n frames, looping when the video is shorter."""
    if n >= count:
        return [k * n // count for k in range(count)]
    return [k % n for k in range(count)]


def published_video(path: str, out_dir: Path, name: str, num_frames: int, size: int,
                    bound: float = PUBLISHED_BOUND) -> dict:
    """The published preprocessing of one video, step by step; returns its timings and outputs."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    mp4, npy = out_dir / f"{name}.mp4", out_dir / f"{name}.npy"
    t0 = time.perf_counter()

    # 1. every frame squashed to size x size, written as MPEG-4 part 2
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise RuntimeError(f"OpenCV cannot open {path}")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and fps > 0 else 30.0
    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    if not writer.isOpened():
        cap.release()
        raise RuntimeError(f"cv2.VideoWriter cannot write mp4v to {mp4}")
    written = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, (size, size)))
        written += 1
    cap.release()
    writer.release()
    if written == 0:
        raise RuntimeError(f"OpenCV decoded no frame of {path}")
    t1 = time.perf_counter()

    # 2. num_frames frames picked by seeking in the squashed video
    cap = cv2.VideoCapture(str(mp4))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or written
    picks = _uniform_picks(n, num_frames)
    gray = []
    for index in picks:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
        if not ok:
            cap.release()
            raise RuntimeError(f"seeking to frame {index} of {mp4} ({n} frames) failed")
        gray.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    cap.release()
    t2 = time.perf_counter()

    # 3. TV-L1 between consecutive picked frames, a new solver each time; clip, scale to 0..255, int64
    fields = []
    for a, b in zip(gray[:-1], gray[1:]):
        solver = cv2.optflow.DualTVL1OpticalFlow_create()
        f = solver.calc(a, b, None)
        fields.append(np.round((np.clip(f, -bound, bound) + bound) * (255.0 / (2 * bound))).astype(np.int64))
    flows = np.stack(fields) if fields else np.zeros((0, size, size, 2), np.int64)
    t3 = time.perf_counter()
    np.save(npy, flows)
    t4 = time.perf_counter()
    return {"id": name, "seconds": t4 - t0, "squash_write_s": t1 - t0, "seek_s": t2 - t1, "flow_s": t3 - t2,
            "save_s": t4 - t3, "source_frames": written, "mp4_frames": n, "picks": picks,
            "mp4": str(mp4), "npy": str(npy), "mp4_bytes": mp4.stat().st_size, "npy_bytes": npy.stat().st_size,
            "npy_shape": list(flows.shape), "npy_dtype": str(flows.dtype)}


def run_published(videos: Sequence[Video], out_dir: Path, mode: Mode, threads: int) -> dict:
    """The published preprocessing over the inputs, sequentially, OpenCV using all cores as it does by default."""
    import cv2

    shutil.rmtree(out_dir, ignore_errors=True)
    cv2.setNumThreads(threads)
    per_video = []
    started = time.perf_counter()
    for v in videos:
        per_video.append(published_video(v.path, out_dir, file_key(v.id), mode.num_frames, mode.size))
        r = per_video[-1]
        _say(f"  published {v.id}: {r['seconds']:.1f} s (squash+write {r['squash_write_s']:.1f}, seek "
             f"{r['seek_s']:.1f}, TV-L1 {r['flow_s']:.1f}), {(r['mp4_bytes'] + r['npy_bytes']) / MB:.1f} MB")
    seconds = time.perf_counter() - started
    n = len(videos)
    mp4 = sum(r["mp4_bytes"] for r in per_video)
    npy = sum(r["npy_bytes"] for r in per_video)
    return {"seconds": seconds, "s_per_video": seconds / n, "threads": threads,
            "mb_per_video": (mp4 + npy) / MB / n, "mp4_mb_per_video": mp4 / MB / n, "npy_mb_per_video": npy / MB / n,
            "per_video": per_video}


# ----------------------------------------------------------------------------- other figures


def time_decode(video: Video, mode: Mode, repeats: int = 3) -> dict:
    """Our decoder on the portrait clip at the benchmark geometry; best of `repeats` (the machine is shared)."""
    settings = clip.ClipSettings(num_frames=mode.num_frames, size=mode.size, resize="squash")
    runs, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        picks, decoded, _ = clip.decode_picked(video, settings)
        runs.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    shape = list(next(iter(decoded.values())).shape)
    # FFmpeg's CPU seconds (probe + decode) say what the clip costs when other work shares the cores
    return {"seconds": min(runs), "median_seconds": statistics.median(runs), "runs": runs,
            "ffmpeg_cpu_seconds": cpu, "clip": video.path, "picked": len(picks), "frame_shape": shape}


def time_torch_vs_opencv(video: Video, mode: Mode, threads: int) -> dict:
    """pairs/s of extract.tvl1_torch on the CPU and of OpenCV on the same real frame pairs of the portrait clip."""
    pairs = mode.torch_pairs
    entry: dict[str, Any] = {"measured": False, "pairs": pairs, "size": mode.size, "threads": threads}
    try:
        import cv2
        import torch

        from extract.tvl1_torch import TorchTVL1
    except Exception as exc:   # the module may be missing or broken: say so instead of failing the benchmark
        entry["reason"] = f"extract.tvl1_torch does not import: {type(exc).__name__}: {exc}"
        return entry
    settings = clip.ClipSettings(num_frames=mode.num_frames, size=mode.size, resize="squash")
    picks, decoded, partners = clip.decode_picked(video, settings, with_partners=True, gray=True)
    chosen = [(int(p), int(q)) for p, q in zip(picks, partners) if q > p][:pairs]
    if not chosen:
        entry["reason"] = f"no pair of consecutive frames in {video.path}"
        return entry
    first = np.stack([decoded[p] for p, _ in chosen])
    second = np.stack([decoded[q] for _, q in chosen])
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    try:
        solver = TorchTVL1(device="cpu")
        solver.calc(first[:1, :32, :32], second[:1, :32, :32])   # warm-up: first-call costs are not per pair
        started = time.perf_counter()
        ours = np.asarray(solver.calc(first, second))
        t_torch = time.perf_counter() - started
    except Exception as exc:   # a half-finished solver: report why it was not measured
        entry["reason"] = f"TorchTVL1 failed on {len(chosen)} pair(s) of {mode.size}x{mode.size}: {type(exc).__name__}: {exc}"
        return entry
    finally:
        torch.set_num_threads(torch_threads)
    reference = cv2.optflow.DualTVL1OpticalFlow_create()
    started = time.perf_counter()
    ref = np.stack([reference.calc(a, b, None) for a, b in zip(first, second)])
    t_cv = time.perf_counter() - started
    if ours.shape != ref.shape:
        entry["reason"] = f"TorchTVL1 returned shape {list(ours.shape)}, OpenCV {list(ref.shape)}"
        return entry
    entry.update(measured=True, pairs=len(chosen), torch_seconds=t_torch, opencv_seconds=t_cv,
                 torch_pairs_per_s=len(chosen) / t_torch, opencv_pairs_per_s=len(chosen) / t_cv,
                 torch_over_opencv=t_cv / t_torch,
                 mean_epe_px=float(np.sqrt(((ours - ref) ** 2).sum(-1)).mean()))
    return entry


# ----------------------------------------------------------------------------- report


def _check(name: str, measured: float | None) -> dict:
    op, target = TARGETS[name]
    if measured is None:
        passed = None
    else:
        passed = measured >= target if op == ">=" else measured < target
    return {"name": name, "target": f"{op} {target:g}", "measured": measured, "pass": passed}


def _fmt(value, unit="") -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}{unit}" if abs(value) < 100 else f"{value:.0f}{unit}"


def table_lines(report: dict) -> list[str]:
    """The printed (and markdown) table: targets, measured figures, pass/fail; then the raw figures."""
    size = f"{report['settings']['num_frames']} frames at {report['settings']['size']} px"
    labels = {"speed_ratio": "speed: published s / ours s per video",
              "disk_ratio": "disk: published MB / ours MB per video",
              "decode_seconds": f"decode the portrait clip, {size} (best of 3)",
              "solver_fraction": "share of flow time inside the TV-L1 solver"}
    shown = {"speed_ratio": lambda v: f"{v:.2f}x", "disk_ratio": lambda v: f"{v:.1f}x",
             "decode_seconds": lambda v: f"{v:.2f} s", "solver_fraction": lambda v: f"{100 * v:.1f}%"}
    lines = ["| check | target | measured | result |", "|---|---|---|---|"]
    for c in report["checks"]:
        op, target = TARGETS[c["name"]]
        result = "n/a" if c["pass"] is None else ("pass" if c["pass"] else "FAIL")
        measured = "n/a" if c["measured"] is None else shown[c["name"]](c["measured"])
        if c["name"] == "decode_seconds" and report["decode"].get("ffmpeg_cpu_seconds"):
            measured += f" (FFmpeg CPU {min(report['decode']['ffmpeg_cpu_seconds']):.2f} s)"
        lines.append(f"| {labels[c['name']]} | {op} {shown[c['name']](target)} | {measured} | {result} |")
    tv = report["torch_vs_opencv"]
    if tv["measured"]:
        lines.append(f"| torch vs OpenCV TV-L1 on CPU, {tv['size']} px, {tv['threads']} threads | (info) | "
                     f"torch {tv['torch_pairs_per_s']:.3g} pairs/s, OpenCV {tv['opencv_pairs_per_s']:.3g} pairs/s "
                     f"(torch {tv['torch_over_opencv']:.2f}x OpenCV; mean EPE {tv['mean_epe_px']:.3g} px) | - |")
    else:
        lines.append(f"| torch vs OpenCV TV-L1 on CPU | (info) | not measured: {tv['reason']} | - |")
    o, p = report["ours"], report["published"]
    lines += ["", "| pipeline | s per video | MB per video |", "|---|---|---|",
              f"| ours frames | {_fmt(o['frames']['s_per_video'])} | {_fmt(o['frames']['mb_per_video'])} |",
              f"| ours flow | {_fmt(o['flow']['s_per_video'])} | {_fmt(o['flow']['mb_per_video'])} |",
              f"| ours frames + flow ({o['jobs']} jobs) | {_fmt(o['s_per_video'])} | {_fmt(o['mb_per_video'])} |",
              f"| ours audio (not in the comparison) | {_fmt(o['audio']['s_per_video'])} | {_fmt(o['audio']['mb_per_video'])} |",
              f"| published (mp4 + int64 npy, 1 process) | {_fmt(p['s_per_video'])} | {_fmt(p['mb_per_video'])} "
              f"(mp4 {_fmt(p['mp4_mb_per_video'])}, npy {_fmt(p['npy_mb_per_video'])}) |"]
    return lines


def write_report(out: Path, report: dict) -> None:
    durable.atomic_write_bytes(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    m = report["machine"]
    s = report["settings"]
    head = [f"# DMVER extraction benchmark ({'quick: not comparable with the targets' if report['quick'] else 'full'})", "",
            f"- date: {report['date']}",
            f"- command: `{report['command']}`",
            f"- machine: {m['cpu_count']} CPU(s), {m['platform']}, Python {m['python']}, OpenCV {m['opencv']}",
            f"- load average (1, 5, 15 min) at start {m['loadavg_start']}, at end {m['loadavg_end']}",
            f"- inputs: {s['videos']} sample video(s) + one {s['clip_seconds']:g}-s {CLIP_W}x{CLIP_H} clip; "
            f"{s['num_frames']} frames at {s['size']}x{s['size']} (squash); ours with {report['ours']['jobs']} jobs",
            f"- wall time of the whole benchmark: {report['wall_seconds']:.0f} s", ""]
    text = "\n".join(head + table_lines(report)) + "\n"
    durable.atomic_write_bytes(out / "report.md", text.encode())


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.parser("python -m benchmarks.stages", __doc__.split("\n\n")[0])
    parser.add_argument("--out", default="work/bench", help="inputs (kept between runs), outputs and report")
    parser.add_argument("--videos", type=int, default=None,
                        help=f"sample videos besides the portrait clip (default {FULL.videos}, {QUICK.videos} with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (figures not comparable)")
    parser.add_argument("--jobs", type=int, default=0, help="videos in parallel for our stages (0: all cores)")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    videos_wanted = mode.videos if args.videos is None else args.videos
    if videos_wanted < 0:
        parser.error("--videos must be >= 0")
    return cli.run(lambda: _main(args, argv, mode, videos_wanted), verbose=args.verbose)


def _main(args, argv: Sequence[str] | None, mode: Mode, videos_wanted: int) -> int:
    started = time.perf_counter()
    load_start = os.getloadavg()
    out = Path(args.out)
    cores = default_jobs()

    _say(f"[{mode.name}] inputs in {out / 'inputs' / mode.name} ...")
    videos, portrait = make_inputs(out / "inputs" / mode.name, mode, videos_wanted)
    inputs = [describe_input(v) for v in videos]
    _say(f"  {len(videos)} videos ready after {time.perf_counter() - started:.0f} s")

    _say("ours: frames, flow, audio stages")
    ours = run_ours(videos, out / mode.name / "ours", mode, args.jobs)
    _say("published preprocessing (sequential)")
    published = run_published(videos, out / mode.name / "published", mode, cores)
    _say("decoding the portrait clip with our decoder")
    decode = time_decode(portrait, mode)
    _say("torch vs OpenCV TV-L1")
    torch_cv = time_torch_vs_opencv(portrait, mode, cores)

    speed = published["s_per_video"] / ours["s_per_video"]
    disk = published["mb_per_video"] / ours["mb_per_video"] if ours["mb_per_video"] > 0 else None
    checks = [_check("speed_ratio", speed), _check("disk_ratio", disk), _check("decode_seconds", decode["seconds"]),
              _check("solver_fraction", ours["flow"]["solver_fraction"])]
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.stages", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "machine": {"cpu_count": os.cpu_count(), "usable_cpus": cores, "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "opencv": __import__("cv2").__version__,
                    "loadavg_start": [round(x, 2) for x in load_start],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": {"mode": mode.name, "videos": videos_wanted, "num_frames": mode.num_frames, "size": mode.size,
                     "resize": "squash", "clip_seconds": mode.clip_seconds, "ours_flow_bound": flow.FlowSettings().bound,
                     "published_flow_bound": PUBLISHED_BOUND, "mb": "10^6 bytes"},
        "inputs": inputs,
        "ours": ours,
        "published": published,
        "ratios": {"speed": speed, "disk": disk},
        "decode": decode,
        "solver_fraction": ours["flow"]["solver_fraction"],
        "torch_vs_opencv": torch_cv,
        "checks": checks,
        "targets_note": "targets apply to the full settings" + ("; this quick run is a smoke test" if args.quick else ""),
        "wall_seconds": time.perf_counter() - started,
    }
    write_report(out, report)
    _say("")
    for line in table_lines(report):
        _say(line)
    _say(f"\nload average {report['machine']['loadavg_start']} -> {report['machine']['loadavg_end']}; "
         f"{report['wall_seconds']:.0f} s in all; report: {out / 'report.md'}, {out / 'report.json'}")
    failed = sum(ours[s]["failed"] for s in ("frames", "flow", "audio"))
    if failed:
        print(f"error: {failed} stage run(s) failed on some video (see {out / mode.name / 'ours'}/<stage>/failures.csv); "
              "the figures compare different work", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run through the importable module so worker processes can unpickle the timed flow stage by name.
    from benchmarks.stages import main as _main

    sys.exit(_main())
