"""Benchmark: load a DMVER-size feature cache, each modality timed in a fresh process.

    python -m benchmarks.cache [--videos 31761] [--out DIR] [--cold] [--rebuild] [--clean]

Builds (or reuses) a synthetic cache of `--videos` videos under `DIR/features/` with the real
shapes: rgb and flow `[10, 1024]`, audio `[13..17, 128]` (about 2 % of the videos without
audio), rgb2d `[79, 512]` (`text` `[1, 384]`, about 15 % without a caption, is built only for
`benchmarks.classify`), written through `cache.write_consolidated` (the file format the
feature stage writes). Then each modality's `cache.load` runs in its own process, so its peak
memory (max RSS) is measured alone; `--cold` first drops the file from the page cache
(`posix_fadvise DONTNEED`) to time a read from disk. Prints a table and writes
`DIR/bench_cache.json`.

At full size the files take about 10 GB on disk (rgb2d 5.1 GB); loading all four modalities
at once needs about 8 GB of memory. `--clean` deletes the synthetic cache afterwards.

`synthetic_cache` is shared with `benchmarks.classify`, which adds a learnable class signal.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from extract import cli
from features import cache

# modality: (feature size, min length, max length, fraction of videos without it)
SHAPES = {
    "rgb": (1024, 10, 10, 0.0),
    "flow": (1024, 10, 10, 0.0),
    "audio": (128, 13, 17, 0.02),
    "rgb2d": (512, 79, 79, 0.0),
    # one caption embedding per video; about 15 % of DMVER's videos have no caption
    "text": (384, 1, 1, 0.15),
}
# What the cache benchmark loads (text, 50 MB, is for `benchmarks.classify`'s joint heads).
LOADED = ("rgb", "flow", "audio", "rgb2d")
CLASSES = ("negative", "neutral", "positive")
# Per modality: strength of the class signal (0 = pure noise). Chosen so that single heads land
# roughly where the published DMVER heads do (about 40 to 60 % on three classes).
SIGNAL = {"rgb": 0.9, "flow": 1.0, "audio": 0.55, "rgb2d": 0.5, "text": 0.6}


def synthetic_videos(n: int) -> list[tuple[str, str, str]]:
    """(id, label, split) for n videos: balanced classes, per class 3 of 5 to train, 1 val, 1 test."""
    out = []
    pattern = ("train", "train", "train", "val", "test")
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]
        k = i // len(CLASSES)
        out.append((f"{label}/video{i:06d}", label, pattern[k % len(pattern)]))
    return out


def synthetic_cache(work: str | os.PathLike, n: int, modalities=LOADED, signal: bool = False,
                    seed: int = 0, weights: str = "random") -> dict[str, Path]:
    """Write `W/features/<m>.h5` for n synthetic videos (ids and labels from `synthetic_videos`).

    Each video's sequence is `s * pattern[class] + video noise + per-step noise` when `signal`,
    else plain noise. Returns the written paths.
    """
    videos = synthetic_videos(n)
    labels = np.array([CLASSES.index(label) for _, label, _ in videos])
    paths = {}
    for mi, m in enumerate(modalities):
        dim, lo, hi, missing_frac = SHAPES[m]
        rng = np.random.default_rng([seed, mi])
        has = rng.random(n) >= missing_frac
        lengths = rng.integers(lo, hi + 1, size=n)[has]
        ids = [v[0] for v, h in zip(videos, has) if h]
        y = labels[has]
        strength = SIGNAL[m] if signal else 0.0
        patterns = rng.standard_normal((len(CLASSES), dim), dtype=np.float32)
        patterns /= np.linalg.norm(patterns, axis=1, keepdims=True)
        # each modality sees the true class of most videos, and a random one of the others
        seen = np.where(rng.random(len(y)) < 0.75, y, rng.integers(0, len(CLASSES), len(y)))

        def blocks(rng=rng, lengths=lengths, seen=seen, patterns=patterns, strength=strength, dim=dim):
            step = 512
            for a in range(0, len(lengths), step):
                b = min(len(lengths), a + step)
                rows = int(lengths[a:b].sum())
                block = rng.standard_normal((rows, dim), dtype=np.float32)
                per_video = strength * patterns[seen[a:b]] + 0.5 * rng.standard_normal((b - a, dim), dtype=np.float32)
                block += np.repeat(per_video, lengths[a:b], axis=0)
                yield block

        why = "no caption (synthetic)" if m == "text" else "no audio track (synthetic)"
        missing = {v[0]: why for v, h in zip(videos, has) if not h}
        attrs = {"backbone": f"synthetic-{m}", "weights": weights, "checkpoint": None, "sha256": "random",
                 "synthetic": True, "videos": n, "signal": bool(signal), "seed": seed}
        paths[m] = cache.write_consolidated(cache.cache_path(work, m), ids, lengths, dim, blocks(), missing, attrs,
                                            source_digest=f"synthetic-{m}-{n}-{int(signal)}-{seed}")
    return paths


# DMVER: 31,761 videos from about 30,000 publishers.
PUBLISHER_SHARE = 30000 / 31761


def write_synthetic_manifest(path: str | os.PathLike, n: int, groups: bool = False) -> Path:
    """The manifest of `synthetic_videos(n)`; `groups`: a DMVER-like publisher column (video i is
    publisher i mod P, P = 30,000 / 31,761 of n, so about 6 % of the publishers have two videos)."""
    from extract.manifest import Video, write_manifest

    publishers = max(1, round(n * PUBLISHER_SHARE))
    return write_manifest(path, [Video(id=i, path=f"videos/{i}.mp4", label=label, split=split,
                                       group=f"pub{k % publishers:05d}" if groups else None)
                                 for k, (i, label, split) in enumerate(synthetic_videos(n))])


def _drop_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _load_once(work: str, modality: str, cold: bool) -> dict:
    path = cache.cache_path(work, modality)
    if cold:
        _drop_page_cache(path)
    t = time.perf_counter()
    f = cache.load(work, modality)
    seconds = time.perf_counter() - t
    return {"modality": modality, "seconds": seconds, "videos": len(f.ids), "shape": list(f.x.shape),
            "padded_gb": f.x.nbytes / 1e9, "file_gb": path.stat().st_size / 1e9,
            "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "missing": len(cache.missing(work, modality))}


def _cache_matches(work: Path, n: int) -> bool:
    try:
        return all(cache.attributes(work, m).get("videos") == n for m in LOADED)
    except cache.CacheError:
        return False


def main(argv=None) -> int:
    parser = cli.parser("python -m benchmarks.cache", __doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=31761)
    parser.add_argument("--out", default="work/bench-cache", help="folder for the synthetic cache and the JSON")
    parser.add_argument("--cold", action="store_true", help="drop each file from the page cache before loading it")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the synthetic cache even if one of this size exists")
    parser.add_argument("--clean", action="store_true", help="delete the synthetic cache afterwards")
    parser.add_argument("--_load", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose)


def _main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args._load:
        print(json.dumps(_load_once(str(out), args._load, args.cold)))
        return 0

    build_seconds = None
    if args.rebuild or not _cache_matches(out, args.videos):
        t = time.perf_counter()
        synthetic_cache(out, args.videos)
        build_seconds = time.perf_counter() - t
        print(f"built a synthetic cache of {args.videos} videos in {build_seconds:.1f} s under {out / 'features'}")
    rows = []
    for m in LOADED:
        cmd = [sys.executable, "-m", "benchmarks.cache", "--out", str(out), "--_load", m] + (["--cold"] if args.cold else [])
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    total = sum(r["seconds"] for r in rows)
    lines = [f"{'modality':<9}{'videos':>8}  {'padded shape':<20}{'file GB':>8}{'array GB':>9}{'load s':>8}{'GB/s':>7}{'peak RSS GB':>12}"]
    for r in rows:
        lines.append(f"{r['modality']:<9}{r['videos']:>8}  {str(tuple(r['shape'])):<20}{r['file_gb']:>8.2f}{r['padded_gb']:>9.2f}"
                     f"{r['seconds']:>8.2f}{r['file_gb'] / r['seconds']:>7.2f}{r['max_rss_gb']:>12.2f}")
    lines.append(f"all four modalities: {total:.1f} s ({'cold: read from disk' if args.cold else 'warm page cache'}); target < 60 s")
    print("\n".join(lines))
    result = {"videos": args.videos, "cold": args.cold, "build_seconds": build_seconds, "total_load_seconds": total,
              "modalities": rows, "cpus": os.cpu_count(), "machine": platform.platform()}
    (out / "bench_cache.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out / 'bench_cache.json'}")
    if args.clean:
        shutil.rmtree(out / "features", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
