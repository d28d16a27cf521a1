"""Feature stage: run a frozen backbone over one modality's stage outputs, cache per-video sequences.

`python -m features.extract --modality rgb|flow|audio|rgb2d --manifest M --work W [--weights DIR|random]`

| modality | reads (stage)    | backbone           | cached per video   |
|----------|------------------|--------------------|--------------------|
| rgb      | W/frames         | I3D RGB            | [T', 1024]          |
| flow     | W/flow           | I3D flow           | [T', 1024]          |
| audio    | W/audio          | VGGish (+ --pca)   | [N, 128]            |
| rgb2d    | W/frames         | ResNet-18          | [T, 512]            |

Videos are written as shards as they finish and consolidated into `W/features/<modality>.h5`
at the end (features/cache.py), so a killed run resumes where it stopped. A video without the
modality (no audio stream, failed upstream, not extracted) is recorded as missing with its
reason, never zero-filled. Loading and preprocessing run in DataLoader worker processes
(`--loaders`) so they overlap the network.

Exit codes: 0 every video has features or a recorded reason; 1 some videos failed here
(their reason is recorded as missing); 2 nothing ran (no weights, settings clash, bad manifest).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from extract import audio as audio_stage
from extract import flow as flow_stage
from extract import frames as frames_stage
from extract import stage
from extract.manifest import ManifestError, Video, read_manifest
from features import backbones, cache, inputs

log = logging.getLogger(__name__)

# modality -> (stage folder, loader of one video's stage output, stage output -> model input)
SOURCES: dict[str, tuple[str, Callable, Callable]] = {
    "rgb": (frames_stage.NAME, frames_stage.load, inputs.rgb_clip),
    "flow": (flow_stage.NAME, flow_stage.load, inputs.flow_clip),
    "audio": (audio_stage.NAME, audio_stage.load, inputs.log_mel_batch),
    "rgb2d": (frames_stage.NAME, frames_stage.load, inputs.imagenet_frames),
}
NO_AUDIO = "no audio stream"


class _Inputs(torch.utils.data.Dataset):
    """Stage output -> model input for one video, in a loader worker; failures come back as text."""

    def __init__(self, work: Path, modality: str, ids: Sequence[str]):
        self.work, self.modality, self.ids = work, modality, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        vid = self.ids[i]
        _, load, prepare = SOURCES[self.modality]
        try:
            array = load(self.work, vid)
            if array is None:
                return vid, None, NO_AUDIO
            return vid, prepare(array), None
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # one unreadable file: recorded, not fatal
            return vid, None, f"{type(exc).__name__}: {exc}"


def _first(batch):
    return batch


def source_settings(work: Path, stage_name: str) -> dict:
    path = stage.stage_dir(work, stage_name) / "settings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def package_version() -> str:
    try:
        return importlib.metadata.version("dmver-bench")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def extract_features(modality: str, videos: Sequence[Video], work: str | Path, weights: str = "weights",
                     device: str = "auto", batch_size: int | None = None, loaders: int = 1, seed: int = 0,
                     pca: bool = False, progress: bool | None = None) -> dict:
    """Fill `W/features/<modality>.h5` for these videos; returns the counts for the summary line."""
    started = time.perf_counter()
    work = Path(work).resolve()
    stage_name, _, _ = SOURCES[modality]
    backbone = backbones.load_backbone(modality, weights=weights, device=device, seed=seed, pca=pca,
                                       batch_size=batch_size)
    attrs = {**backbone.info(), "backbone": type(backbone.model).__name__,
             "weights": "random" if backbone.checkpoint == "random" else "pretrained",
             "stage": stage_name, "stage_settings": source_settings(work, stage_name),
             "package_version": package_version()}
    writer = cache.ShardWriter(work, modality, attrs)
    shards = cache.shard_dir(work, modality)

    failed_upstream: dict[str, str] = {}
    for name in dict.fromkeys(("frames", stage_name)):
        for vid, reason in stage.read_failures(work, name).items():
            failed_upstream.setdefault(vid, f"failed in {name}: {reason}")
    counts = {"done": 0, "skipped": 0, "missing": 0, "failed": 0}
    todo = []
    for v in videos:
        if (shards / f"{cache.shard_name(v.id)}.npy").is_file():
            counts["skipped"] += 1
        elif stage.output_path(work, stage_name, v.id, ".npz").is_file():
            todo.append(v.id)
        else:
            writer.missing(v.id, failed_upstream.get(v.id, f"not extracted: no {stage_name} output (run the {stage_name} stage)"))
            counts["missing"] += 1

    loader = torch.utils.data.DataLoader(_Inputs(work, modality, todo), batch_size=backbone.videos_per_call, collate_fn=_first,
                                         num_workers=loaders, prefetch_factor=4 if loaders else None)
    from tqdm import tqdm

    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(todo), desc=f"features {modality}", unit="video", disable=not show, file=sys.stderr)
    for items in loader:
        ready = [(vid, x) for vid, x, _ in items if x is not None]
        for vid, _, problem in items:
            if problem == NO_AUDIO:
                writer.missing(vid, NO_AUDIO)
                counts["missing"] += 1
            elif problem:
                writer.missing(vid, f"failed in features: {problem}")
                counts["failed"] += 1
                log.warning("features %s failed on %r: %s", modality, vid, problem)
        if ready:
            for (vid, _), seq in zip(ready, backbone.embed([x for _, x in ready])):
                writer.write(vid, seq)
                counts["done"] += 1
        bar.update(len(items))
    bar.close()
    path = writer.consolidate([v.id for v in videos])
    return {**counts, "total": len(videos), "seconds": time.perf_counter() - started, "path": str(path),
            "weights": attrs["weights"], "device": str(backbone.device)}


def summary_line(modality: str, s: dict) -> str:
    per_video = f", {s['seconds'] / s['done']:.2f} s per video" if s["done"] else ""
    return (f"features {modality}: done {s['done']} / skipped {s['skipped']} / missing {s['missing']} / "
            f"failed {s['failed']} (of {s['total']} videos; {s['seconds']:.1f} s{per_video} on {s['device']}) -> {s['path']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m features.extract", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--modality", required=True, choices=tuple(SOURCES))
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--weights", default="weights", help="folder of the public checkpoints (make weights), or 'random'")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch-size", type=int,
                        help="rows per forward pass: clips (rgb, flow), examples (audio), frames (rgb2d); default by device and modality")
    parser.add_argument("--loaders", type=int, default=1, help="DataLoader worker processes preparing inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of --weights random")
    parser.add_argument("--pca", action="store_true", help="audio: AudioSet PCA post-processing of VGGish embeddings")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        videos = read_manifest(args.manifest)
        s = extract_features(args.modality, videos, args.work, weights=args.weights, device=args.device,
                             batch_size=args.batch_size, loaders=args.loaders, seed=args.seed, pca=args.pca)
    except (ManifestError, backbones.MissingWeightsError, cache.CacheSettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return stage.EXIT_USAGE
    if s["weights"] == "random":
        print(cache.random_weights_banner(args.work, [args.modality]) or "", file=sys.stderr)
    print(summary_line(args.modality, s))
    return stage.EXIT_SOME_FAILED if s["failed"] else stage.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
