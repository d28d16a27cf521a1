"""DMVER's extraction cost projected from measured per-video rates.

    python -m benchmarks.projection [--bench work/bench-features/bench_features.json]
                                  [--faces work/bench-faces/bench_faces.json]
                                  [--gpu work/gpu-check/report.json] [--cores 16]

What it reads, all measured by commands of this repository:

* `make bench-features` (`benchmarks.features`): seconds per video of each stage and backbone on this
  machine at the default geometry, stages with all cores busy, backbones in one process using
  all cores; the text modality per caption;
* `make bench-faces` (`benchmarks.faces`), when its output exists: the faces stage, the face
  (expression) features and eGeMAPS on a DMVER-like 15-s video, on one core; this machine with
  all its cores does them at that rate divided by its cores (wall seconds on the pinned core);
* `make gpu-check` (`benchmarks.gpu_check`), when its report exists and ran on CUDA: the stages'
  and backbones' seconds per video end to end on the GPU machine.

How it projects, for DMVER (the DMVER dataset README: 31,761 videos of about 15 s, 27,010 with a caption):

* every step costs per video what it cost on the benchmark's videos, except the audio stage and
  the audio backbone, whose work grows with the audio's length: they are scaled by 15 s over
  the benchmark videos' mean duration (frames, flow and the video backbones work on the same 79
  picked frames whatever the length; decoding a longer, larger source costs more, which this
  projection leaves out: `make bench` measured 1.1 s to decode a 15-s 1080p clip's 79 frames);
* the text modality runs on the 27,010 captioned videos;
* another machine of `--cores` cores is this machine's per-core rate times its cores (videos
  are independent, so the stages scale by worker; this assumes the same core speed and enough
  memory bandwidth, which a real machine may not give);
* one GPU: the GPU check's end-to-end seconds per video (stages on that machine's CPUs, flow and
  backbones on the GPU), scaled as above; "not measured" when no report from a CUDA run exists.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from extract import cli

DMVER_VIDEOS, DMVER_CAPTIONED, DMVER_SECONDS = 31_761, 27_010, 15.0
DURATION_SCALED = {"audio"}       # steps whose per-video work grows with the audio's length
# gpu-check's step names -> bench-features' step names
GPU_STEPS = {"frames stage": "frames", "flow stage (torch TV-L1)": "flow", "audio stage": "audio"}


def mean_duration(manifest: Path) -> float:
    """Mean duration in seconds of a manifest's videos (probed)."""
    from extract import media

    with open(manifest, newline="", encoding="utf-8-sig") as f:
        paths = [manifest.parent / row["path"] for row in csv.DictReader(f)]
    durations = [media.probe(p).duration for p in paths]
    return sum(d for d in durations if d) / max(1, sum(1 for d in durations if d))


def face_rows(faces: dict, cores: int) -> list[dict]:
    """bench-faces' one-core seconds as bench-features rows: per video with all `cores` cores busy."""
    parts = (("stage", "faces", "faces_stage"), ("features", "face", "expression"), ("features", "egemaps", "egemaps"))
    return [{"kind": kind, "step": step, "seconds_per_video": faces[key]["wall"] / cores} for kind, step, key in parts]


def _videos(step: str, kind: str) -> int:
    return DMVER_CAPTIONED if (kind, step) == ("features", "text") else DMVER_VIDEOS


def project(bench: dict, bench_seconds: float, cores: int, gpu: dict | None = None) -> dict:
    """Per step: seconds per DMVER video and hours for all of DMVER, here, on `cores` cores, on one GPU."""
    here_cores = int(bench["cpus"])
    scale = DMVER_SECONDS / bench_seconds
    gpu_rows = {}
    if gpu and gpu.get("stages") and str(gpu.get("device", "")).startswith("cuda"):
        for r in gpu["stages"]["rows"]:
            name = GPU_STEPS.get(r["step"], r["step"].removesuffix(" features"))
            kind = "stage" if r["step"] in GPU_STEPS else "features"
            gpu_rows[(kind, name)] = r["seconds_per_video"]
    rows = []
    for r in bench["rows"]:
        factor = scale if r["step"] in DURATION_SCALED else 1.0
        per_video = r["seconds_per_video"] * factor
        n = _videos(r["step"], r["kind"])
        on_gpu = gpu_rows.get((r["kind"], r["step"]))
        rows.append({"kind": r["kind"], "step": r["step"], "seconds_per_video": per_video, "videos": n,
                     "hours_here": per_video * n / 3600,
                     "hours_cores": per_video * here_cores / cores * n / 3600,
                     "hours_gpu": None if on_gpu is None else on_gpu * factor * n / 3600})
    total = lambda key: None if any(r[key] is None for r in rows) else sum(r[key] for r in rows)  # noqa: E731
    return {"rows": rows, "here_cores": here_cores, "cores": cores, "duration_scale": scale,
            "bench_mean_seconds": bench_seconds, "bench_date": bench.get("date"), "bench_load": bench.get("load_average"),
            "total_here": total("hours_here"), "total_cores": total("hours_cores"), "total_gpu": total("hours_gpu"),
            "gpu": (gpu or {}).get("environment", {}).get("gpu")}


def markdown(p: dict) -> str:
    def hours(h):
        return "not measured" if h is None else (f"{h:,.1f} h" if h < 100 else f"{h:,.0f} h")

    gpu_title = f"1 GPU ({p['gpu']})" if p["gpu"] else "1 GPU"
    lines = [f"| step | s per DMVER video here | this machine ({p['here_cores']} cores) | {p['cores']} cores "
             f"(scaled per core) | {gpu_title} |", "|---|---|---|---|---|"]
    for r in p["rows"]:
        name = f"{r['step']} {'stage' if r['kind'] == 'stage' else 'features'}"
        lines.append(f"| {name} | {r['seconds_per_video']:.2f} | {hours(r['hours_here'])} | {hours(r['hours_cores'])} "
                     f"| {hours(r['hours_gpu'])} |")
    lines.append(f"| **all** | | **{hours(p['total_here'])}** | **{hours(p['total_cores'])}** | "
                 f"**{hours(p['total_gpu'])}** |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = cli.parser("python -m benchmarks.projection", __doc__.split("\n\n")[0])
    parser.add_argument("--bench", default="work/bench-features/bench_features.json", help="make bench-features' output")
    parser.add_argument("--faces", default="work/bench-faces/bench_faces.json", help="make bench-faces' output (if any)")
    parser.add_argument("--gpu", default="work/gpu-check/report.json", help="make gpu-check's report (if any)")
    parser.add_argument("--cores", type=int, default=16)
    args = parser.parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose)


def _main(args: argparse.Namespace) -> int:
    bench_file, faces_file = Path(args.bench), Path(args.faces)
    if not bench_file.is_file():
        if faces_file.is_file():
            return _faces_only(json.loads(faces_file.read_text()), args.cores)
        raise cli.UserError(f"{bench_file} is missing: run `make bench-features` first")
    bench = json.loads(bench_file.read_text())
    gpu_file = Path(args.gpu)
    gpu = json.loads(gpu_file.read_text()) if gpu_file.is_file() else None
    seconds = mean_duration(bench_file.parent / "manifest.csv")
    if faces_file.is_file():
        bench = {**bench, "rows": bench["rows"] + face_rows(json.loads(faces_file.read_text()), int(bench["cpus"]))}
    p = project(bench, seconds, args.cores, gpu)
    print(f"DMVER: {DMVER_VIDEOS:,} videos of about {DMVER_SECONDS:.0f} s ({DMVER_CAPTIONED:,} with a caption); "
          f"rates of make bench-features ({p['bench_date']}, load average {p['bench_load'][0]:.1f}), "
          f"audio scaled x{p['duration_scale']:.2f} from the benchmark videos' mean {seconds:.1f} s"
          + ("" if faces_file.is_file() else "; no make bench-faces output: faces, face and egemaps left out")
          + ("" if gpu else "; no GPU report (make gpu-check): GPU not measured"))
    print(markdown(p), end="")
    return 0


def _faces_only(faces: dict, cores: int) -> int:
    """The projection of the faces stage, face and egemaps alone (no make bench-features output)."""
    here = int(faces["cpus"])
    p = project({"cpus": here, "date": faces["date"], "load_average": faces["load_average"],
                 "rows": face_rows(faces, here)}, DMVER_SECONDS, cores)
    print(f"DMVER: {DMVER_VIDEOS:,} videos of about {DMVER_SECONDS:.0f} s; faces stage, face and egemaps only "
          f"(no make bench-features output), rates of make bench-faces ({p['bench_date']}, load average "
          f"{p['bench_load'][0]:.1f}) on one core of {here}")
    print(markdown(p), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
