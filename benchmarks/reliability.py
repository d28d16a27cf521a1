"""What the extraction stages' reliability costs: fsync before every rename, and the provenance check.

    python -m benchmarks.reliability [--manifest data/sample/manifest.csv] [--out work/bench-reliability]
                                        [--repeats 3] [--records 31761]

1. Durable writes. The frames and audio stages (the cheapest per video, so the share of time in
   writing is the largest; flow is 99 % TV-L1) run on the manifest at the demo's geometry (16
   frames of 112 px), one process (`--jobs 1`, so that the switch below applies to the worker),
   into a fresh work folder, alternately with `os.fsync` as it is and with `os.fsync` replaced by
   a no-op: everything else is the same code. Reported: the median wall time of each, and the
   relative cost of fsync.
2. The provenance check. `--records` synthetic outputs with their `.source.json` records and
   sources (made once under OUT/provenance/), then `provenance.stale_reason` for all of them, as a
   re-run does before it decides what to skip: the best of 3, from the page cache.

Prints one line per figure and writes OUT/report.json.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from extract import audio, cli, durable, frames, provenance, stage
from extract.layout import Work
from extract.manifest import Video, read_manifest


def _stages_once(videos, work: Path, fsync: bool) -> float:
    real = os.fsync
    if not fsync:
        os.fsync = lambda fd: None
    try:
        shutil.rmtree(work, ignore_errors=True)
        started = time.perf_counter()
        for st, settings in ((frames.STAGE, frames.FrameSettings(num_frames=16, size=112)),
                             (audio.STAGE, audio.AudioSettings())):
            summary = stage.run_stage(st, videos, work, settings, jobs=1, progress=False)
            if summary.failed:
                raise SystemExit(f"{st.name}: {summary.failed} video(s) failed; the figures would compare different work")
        return time.perf_counter() - started
    finally:
        os.fsync = real
        shutil.rmtree(work, ignore_errors=True)


def durable_writes(videos, out: Path, repeats: int) -> dict:
    times = {"fsync": [], "no fsync": []}
    _stages_once(videos, out / "warmup", True)  # imports, page cache of the inputs
    for r in range(repeats):
        for mode in (("fsync", "no fsync") if r % 2 == 0 else ("no fsync", "fsync")):
            times[mode].append(_stages_once(videos, out / "work", mode == "fsync"))
    on, off = statistics.median(times["fsync"]), statistics.median(times["no fsync"])
    return {"videos": len(videos), "seconds": times, "median_fsync": on, "median_no_fsync": off,
            "fsync_cost": on / off - 1.0}


def provenance_check(folder: Path, records: int) -> dict:
    src, work = folder / "src", folder / "work"
    (work / "frames").mkdir(parents=True, exist_ok=True)
    src.mkdir(parents=True, exist_ok=True)
    videos = [Video(id=f"video {i}", path=str(src / f"v{i:05d}.mp4"), label="a", split="train") for i in range(records)]
    outputs = [Work(work).output("frames", v.id, ".npz") for v in videos]
    for i, (v, out) in enumerate(zip(videos, outputs)):
        if provenance.source_record_path(out).exists():
            continue
        Path(v.path).write_bytes(i.to_bytes(4, "little"))
        out.write_bytes(b"output")
        provenance.write_source_record(out, provenance.source_provenance(v))
    best = None
    for _ in range(3):
        started = time.perf_counter()
        stale = sum(provenance.stale_reason(Work(work).output("frames", v.id, ".npz"), v) is not None
                    for v in videos)
        took = time.perf_counter() - started
        best = took if best is None else min(best, took)
    if stale:
        raise SystemExit(f"{stale} synthetic outputs read as stale: the check is broken")
    return {"records": records, "best_seconds": best}


def main(argv=None) -> int:
    parser = cli.parser("python -m benchmarks.reliability", __doc__.split("\n\n")[0])
    parser.add_argument("--manifest", default="data/sample/manifest.csv")
    parser.add_argument("--out", default="work/bench-reliability")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--records", type=int, default=31761)
    args = parser.parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose)


def _main(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"load_average_start": list(os.getloadavg())}
    videos = read_manifest(args.manifest)
    report["durable_writes"] = d = durable_writes(videos, out, args.repeats)
    print(f"frames + audio stages, {d['videos']} videos, 16 frames of 112 px, 1 job: median "
          f"{d['median_fsync']:.2f} s with fsync, {d['median_no_fsync']:.2f} s without: "
          f"fsync costs {100 * d['fsync_cost']:+.1f} %", flush=True)
    report["provenance"] = p = provenance_check(out / "provenance", args.records)
    print(f"provenance check of {p['records']} outputs: {p['best_seconds']:.2f} s (best of 3)")
    report["load_average_end"] = list(os.getloadavg())
    print(f"load average {report['load_average_start']} -> {report['load_average_end']}")
    durable.atomic_write_bytes(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
