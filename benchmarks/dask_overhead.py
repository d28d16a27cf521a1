"""Benchmark: the Dask path against the local one, same videos, same cores.

    python -m benchmarks.dask_overhead [--videos 6] [--num-frames 79] [--size 224] [--repeats 1]
                                  [--out work/bench-dask]

Takes the first `--videos` videos of the sample dataset and runs each step twice, from an empty
work folder each time, alternating: the local way (stages with joblib and `--jobs 0`, i.e. one
worker per core; the feature stage in one process with its DataLoader) and the Dask way (`--backend
dask --scheduler` on a LocalCluster of one single-threaded worker process per core, started
before the timed run, as a cluster is started before a user's runs). Steps: the frames, flow and
audio stages and every default modality's features (random weights: the same cost as the
pretrained ones); every Dask run gets a fresh cluster, so its workers pay their backbone loads as
the local run does. The time to start the cluster, what a run without `--scheduler` pays on top,
is measured apart.

Reports, per step, the wall seconds of both (the median over `--repeats`) and the Dask path's
overhead, (dask - local) / local; target: within 15 %. Writes `OUT/bench_dask.json`.
`make bench-dask` runs the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

from extract import audio, cli, flow, frames, sample, stage
from extract.clip import ClipSettings
from extract.layout import Work
from extract.manifest import read_manifest, write_manifest
from extract.workers import default_jobs
from features import modalities
from features.extract import extract_features

TARGET = 0.15
STAGES = {"frames": frames, "flow": flow, "audio": audio}


def _cluster(workers: int):
    from dask.distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)


def _stage_run(module, videos, work: Path, geometry: dict, backend: str, scheduler: str | None) -> float:
    settings = {"frames": lambda: frames.FrameSettings(**geometry), "flow": lambda: flow.FlowSettings(**geometry),
                "audio": audio.AudioSettings}[module.NAME]()
    t = time.perf_counter()
    s = stage.run_stage(module.STAGE, videos, work, settings, jobs=0, backend=backend, scheduler=scheduler,
                        progress=False)
    seconds = time.perf_counter() - t
    if s.done != len(videos):
        raise RuntimeError(f"{module.NAME} ({backend}): {s.done} of {len(videos)} videos done")
    return seconds


def _feature_run(modality: str, videos, work: Path, backend: str, scheduler: str | None) -> float:
    t = time.perf_counter()
    s = extract_features(modality, videos, work, weights="random", device="cpu", progress=False, backend=backend,
                         scheduler=scheduler)
    seconds = time.perf_counter() - t
    if s["failed"]:
        raise RuntimeError(f"{modality} features ({backend}): {s['failed']} failed")
    return seconds


def run(videos: int, num_frames: int, size: int, repeats: int, out: Path, sample_dir: Path) -> dict:
    if not (sample_dir / "manifest.csv").is_file():
        sample.main(["--out", str(sample_dir)])
    chosen = read_manifest(sample_dir / "manifest.csv")[:videos]
    write_manifest(out / "manifest.csv", chosen)
    geometry = {"num_frames": num_frames, "size": size}
    workers = default_jobs()
    times: dict[str, dict[str, list[float]]] = {}
    startups: list[float] = []
    base = out / "work"
    steps = [("stage", name) for name in STAGES] + [("features", m) for m in modalities.names(default_only=True)]
    for r in range(repeats):
        for kind, name in steps:
            for backend in ("local", "dask"):
                work = base / f"{backend}-{r}"
                shutil.rmtree(Work(work).stage(name) if kind == "stage" else work / "features", ignore_errors=True)
                cluster = None
                if backend == "dask":
                    t = time.perf_counter()
                    cluster = _cluster(workers)
                    startups.append(time.perf_counter() - t)
                try:
                    scheduler = cluster.scheduler_address if cluster is not None else None
                    if kind == "stage":
                        seconds = _stage_run(STAGES[name], chosen, work, geometry,
                                             "joblib" if backend == "local" else "dask", scheduler)
                    else:
                        seconds = _feature_run(name, chosen, work, backend, scheduler)
                finally:
                    if cluster is not None:
                        cluster.close()
                times.setdefault(f"{kind}:{name}", {}).setdefault(backend, []).append(seconds)
                print(f"  {kind} {name} {backend}: {seconds:.2f} s", file=sys.stderr)
    startup = statistics.median(startups)
    rows = []
    for step, by in times.items():
        kind, name = step.split(":")
        local, dask_ = statistics.median(by["local"]), statistics.median(by["dask"])
        rows.append({"kind": kind, "step": name, "local_seconds": local, "dask_seconds": dask_,
                     "overhead": (dask_ - local) / local, "runs": by})
    total_local = sum(r["local_seconds"] for r in rows)
    total_dask = sum(r["dask_seconds"] for r in rows)
    return {"videos": len(chosen), "num_frames": num_frames, "size": size, "repeats": repeats, "workers": workers,
            "cluster_startup_seconds": startup, "rows": rows, "total_local_seconds": total_local,
            "total_dask_seconds": total_dask, "total_overhead": (total_dask - total_local) / total_local,
            "target": TARGET, "cpus": os.cpu_count(), "machine": platform.platform(),
            "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}


def table(result: dict) -> str:
    lines = [f"{result['videos']} sample videos, {result['num_frames']} frames at {result['size']} px, "
             f"{result['workers']} Dask workers x 1 thread vs local, {result['cpus']} cores, median of "
             f"{result['repeats']}, {result['date']} (load average {result['load_average'][0]:.1f})",
             f"{'step':<16}{'local s':>9}{'dask s':>9}{'overhead':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['kind'] + ' ' + r['step']:<16}{r['local_seconds']:>9.2f}{r['dask_seconds']:>9.2f}"
                     f"{100 * r['overhead']:>+9.1f}%")
    lines.append(f"{'all steps':<16}{result['total_local_seconds']:>9.2f}{result['total_dask_seconds']:>9.2f}"
                 f"{100 * result['total_overhead']:>+9.1f}%   (target within {100 * result['target']:.0f} %)")
    lines.append(f"starting the local cluster ({result['workers']} workers): {result['cluster_startup_seconds']:.1f} s, "
                 f"paid once more by a run without --scheduler")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = cli.parser("python -m benchmarks.dask_overhead", __doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--num-frames", type=int, default=ClipSettings.num_frames)
    parser.add_argument("--size", type=int, default=ClipSettings.size)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--sample", default="data/sample", help="sample dataset folder (generated when missing)")
    parser.add_argument("--out", default="work/bench-dask")
    args = parser.parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose)


def _main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = run(args.videos, args.num_frames, args.size, args.repeats, out, Path(args.sample))
    print(table(result))
    (out / "bench_dask.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out / 'bench_dask.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
