"""Benchmark: seconds and megabytes per video of every stage and backbone on sample videos.

    python -m benchmarks.features [--videos 6] [--num-frames 79] [--size 224] [--out work/bench-features]
    python -m benchmarks.features --modalities r2plus1d s3d clip wav2vec2 hubert   # backbones outside make features

Takes the first `--videos` videos of the sample dataset (generated into `data/sample` when
missing), runs the frames, flow and audio stages on them with all cores (`--jobs 0`, as `make
frames flow audio` does), then each backbone with seeded random weights on the CPU (random
weights cost exactly what the pretrained ones cost). Reports per video:

* each stage's wall time divided by the videos (the figure a full run sees, since the stage
  runs videos in parallel) and the megabytes of its outputs;
* each registered backbone's seconds per video: the feature stage's whole wall time (model load
  included, its share shown apart) over the videos, DataLoader workers preparing inputs while
  the network runs. Caption modalities (text) are timed on `--captions` captions (1,000 by
  default) from the sample generator instead: seconds per caption, times 1,000, is the README's
  "seconds per 1,000 captions".

`--modalities` picks the feature sets (default: those `make features` runs; `--all`: every
registered one); only the stages they read are run (e.g. frames and audio for the clip and
speech models, no flow).

Every run starts from an empty work folder so nothing is reused. Prints a table and writes
`OUT/bench_features.json`. `make bench-features` runs the defaults (79 frames at 224 px).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from extract import audio, cli, flow, frames, sample
from extract.clip import ClipSettings
from extract.layout import Work
from extract.manifest import read_manifest, write_manifest
from features import backbones, modalities
from features.extract import extract_features
from features.modalities import StageSource

STAGES = (frames, flow, audio)


def _megabytes(folder: Path, suffix: str) -> float:
    return sum(p.stat().st_size for p in folder.glob(f"*{suffix}")) / 1e6


def caption_videos(n: int) -> list:
    """n captioned rows for the caption modalities: the sample generator's captions, no video needed."""
    from extract.manifest import Video

    plans = [p for p in sample.plan_dataset(max(15, 2 * n)) if p.text][:n]
    return [Video(id=f"caption{i:05d}", path=f"none/{i}.mp4", label=p.label, split="train", text=p.text)
            for i, p in enumerate(plans)]


def stages_for(names: list[str]) -> list:
    """The stage modules the given modalities read (and their upstream stages), in pipeline order."""
    needed = {s for n in names for s in modalities.get(n).source.stages}
    return [m for m in STAGES if m.NAME in needed]


def run(videos: int, num_frames: int, size: int, out: Path, sample_dir: Path, flow_backend: str = "opencv",
        captions: int = 1000, names: list[str] | None = None) -> dict:
    names = list(names) if names else modalities.names(default_only=True)
    for n in names:
        modalities.get(n)  # an unknown name fails before any work
    if not (sample_dir / "manifest.csv").is_file():
        sample.main(["--out", str(sample_dir)])
    chosen = read_manifest(sample_dir / "manifest.csv")[:videos]
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    manifest = write_manifest(out / "manifest.csv", chosen)
    common = ["--manifest", str(manifest), "--work", str(work), "--jobs", "0"]
    geometry = ["--num-frames", str(num_frames), "--size", str(size)]
    rows = []
    for module in stages_for(names):
        argv = common + ([] if module is audio else geometry) + (["--flow-backend", flow_backend] if module is flow else [])
        t = time.perf_counter()
        code = module.main(argv)
        seconds = time.perf_counter() - t
        done = len(list(Work(work).stage(module.NAME).glob(f"*{module.SUFFIX}")))
        rows.append({"step": module.NAME, "kind": "stage", "exit_code": code, "videos": done,
                     "seconds_per_video": seconds / max(done, 1),
                     "mb_per_video": _megabytes(Work(work).stage(module.NAME), module.SUFFIX) / max(done, 1)})
    for modality in names:
        # videos for stage inputs; a set of `captions` captions for the manifest's text column
        items = chosen if isinstance(modalities.get(modality).source, StageSource) else caption_videos(captions)
        backbones.load_backbone(modality, weights="random", device="cpu")      # imports, first-touch costs
        t = time.perf_counter()
        backbones.load_backbone(modality, weights="random", device="cpu")
        load_seconds = time.perf_counter() - t
        s = extract_features(modality, items, work, weights="random", device="cpu", progress=False)
        rows.append({"step": modality, "kind": "features", "videos": s["done"], "model_load_seconds": load_seconds,
                     "seconds_per_video": s["seconds"] / max(s["done"], 1), "mb_per_video": None,
                     "unit": "video" if items is chosen else "caption"})
    return {"videos": len(chosen), "num_frames": num_frames, "size": size, "flow_backend": flow_backend, "rows": rows,
            "cpus": os.cpu_count(), "machine": platform.platform(), "load_average": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def table(result: dict) -> str:
    lines = [f"{result['videos']} sample videos, {result['num_frames']} frames at {result['size']} px, "
             f"{result['cpus']} cores, {result['date']} (load average {result['load_average'][0]:.1f})",
             f"{'step':<9}{'kind':<10}{'s/video':>9}{'MB/video':>10}  note"]
    for r in result["rows"]:
        mb = f"{r['mb_per_video']:.2f}" if r["mb_per_video"] is not None else "-"
        note = (f"{r['videos']} {r.get('unit', 'video')}s, includes loading the model once, "
                f"{r['model_load_seconds']:.1f} s" if r["kind"] == "features" else f"exit {r['exit_code']}")
        if r.get("unit") == "caption":
            note += f"; {1000 * r['seconds_per_video']:.1f} s per 1,000 captions"
        lines.append(f"{r['step']:<9}{r['kind']:<10}{r['seconds_per_video']:>9.2f}{mb:>10}  {note}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = cli.parser("python -m benchmarks.features", __doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--num-frames", type=int, default=ClipSettings.num_frames)
    parser.add_argument("--size", type=int, default=ClipSettings.size)
    parser.add_argument("--flow-backend", default="opencv", choices=("opencv", "torch"))
    parser.add_argument("--captions", type=int, default=1000, help="captions for the text modality's figure")
    parser.add_argument("--modalities", nargs="+", metavar="NAME",
                        help="feature sets to time (default: those of make features): " + ", ".join(modalities.names()))
    parser.add_argument("--all", action="store_true", help="every registered feature set")
    parser.add_argument("--sample", default="data/sample", help="sample dataset folder (generated when missing)")
    parser.add_argument("--out", default="work/bench-features")
    args = parser.parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose)


def _main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    names = modalities.names() if args.all else args.modalities
    result = run(args.videos, args.num_frames, args.size, out, Path(args.sample), args.flow_backend, args.captions,
                 names)
    print(table(result))
    (out / "bench_features.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out / 'bench_features.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
