"""Benchmark: train the whole results table on a DMVER-size synthetic feature cache.

    python -m benchmarks.classify [--videos 31761] [--seeds 5] [--cv fixed|K|groups] [--out DIR] [--keep]
                                  [--joint early,tfn,xattn|none]

Builds a synthetic cache with the real shapes (`benchmarks.cache.synthetic_cache` with a
learnable class signal: rgb and flow `[10, 1024]`, audio `[13..17, 128]` with about 2 % of the
videos missing, rgb2d `[79, 512]`) and its manifest under `DIR`, then times what
`classify.table` computes: the `lstm` head on rgb2d, rgb, flow and audio for every seed, and the
weighted fusions rgb+flow and rgb+flow+audio for every seed (which reuse those runs). Prints a
table and writes `DIR/bench_classify.json` with the total wall time, the load time per modality
and the fit time per modality and seed. Target: under 10 minutes on 2 CPU cores at full size.

`--cv K` (`make bench-classify CV=5`) times the cross-validated table instead: the manifest gets a
DMVER-like publisher column (`write_synthetic_manifest(groups=True)`), every head is trained on
every fold for every seed (modality by modality, so each cache is loaded and time-pooled once
for all folds and seeds), both fusions run on every fold and seed, and then `classify.table`'s
`build_table` assembles the table from those runs (reusing them: what a second `make table`
costs, bootstrap intervals and significance tests included). Target: under 30 minutes.

Then, unless `--joint none`, each joint rule (`--joint early,tfn,xattn`, default all three) is
timed on rgb+flow+audio+text (`text`: one 384-dimensional caption vector, 15 % of the videos
without one) for every seed (and fold), beside the late `weighted` rule on the same four
modalities measured in the same run (its single runs, text's trained here, plus its fusions):
each rule's seconds (loading the four caches included), its runs' fit times and epochs, and its
ratio to the late rule. Target: at most 30 minutes per joint rule.

At full size the cache takes about 10 GB on disk; it and the runs are deleted afterwards unless
`--keep` (a kept cache of the same size is reused by the next run, the runs never are: every
run trains afresh so that the timings mean something).
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

from classify import protocol
from classify.fuse import fuse
from classify.heads import LSTMHead, make_head
from classify.cells import build_table
from classify.data import FeatureStore, Labels
from classify.joint import JOINT_RULES
from classify.table import parse_joint
from classify.train import effective_jobs, train_runs
from features import cache
from benchmarks.cache import synthetic_cache, write_synthetic_manifest

MODALITIES = ("rgb2d", "rgb", "flow", "audio")
FUSIONS = (("rgb", "flow"), ("rgb", "flow", "audio"))
# The joint heads' modalities: what "All modalities" fuses on DMVER (text: one caption vector, 15 % missing).
JOINT_MODALITIES = ("rgb", "flow", "audio", "text")


def _cache_matches(work: Path, n: int) -> bool:
    try:
        return all(cache.attributes(work, m).get("videos") == n and cache.attributes(work, m).get("signal")
                   for m in MODALITIES + ("text",))
    except cache.CacheError:
        return False


TARGET_SECONDS = {"fixed": 600, "cv": 1800}
JOINT_TARGET_SECONDS = 1800  # per joint rule, all seeds (and folds)


def run_joint_bench(out: Path, folds, seeds: int, rules, head: str, jobs: int, single_seconds: dict, log=print) -> dict:
    """Time each joint rule on `JOINT_MODALITIES` for every fold and seed, beside the late
    `weighted` rule on the same modalities measured in the same run: its single runs' training
    (`single_seconds` for those the table trained, text trained here) plus the fusions. A rule's
    time includes loading the caches once, as a `classify.fuse --rule R` of its own pays it."""
    from classify.joint_run import JointData, joint_runs

    mods = list(JOINT_MODALITIES)
    t = time.perf_counter()
    train_runs(out, folds, "text", head, list(range(seeds)), jobs=jobs)
    singles = {**{m: single_seconds[m] for m in mods if m in single_seconds}, "text": time.perf_counter() - t}
    t = time.perf_counter()
    accs = [fuse(out, fold, mods, head, "weighted", seed).metrics["joint"]["accuracy"]
            for fold in folds for seed in range(seeds)]
    late = {"modalities": mods, "rule": "weighted", "single_train_seconds": singles,
            "fuse_seconds": time.perf_counter() - t, "mean_test_accuracy": sum(accs) / len(accs)}
    late["seconds"] = sum(singles.values()) + late["fuse_seconds"]
    log(f"  late weighted {'+'.join(mods)}: {late['seconds']:.1f} s (single runs {sum(singles.values()):.1f} s, "
        f"fusion {late['fuse_seconds']:.1f} s)")
    t = time.perf_counter()
    data = JointData(out, mods)
    load_seconds = time.perf_counter() - t
    entries = []
    for rule in rules:
        t = time.perf_counter()
        grid = joint_runs(out, folds, mods, rule, list(range(seeds)), data=data)
        seconds = time.perf_counter() - t + load_seconds
        runs = [{"seed": seed, "fold": fold.tag or None, "fit_seconds": r.metrics["joint"]["fit_seconds"],
                 "epochs": r.metrics["joint"]["epochs"], "best_epoch": r.metrics["joint"]["best_epoch"],
                 "test_accuracy": r.metrics["joint"]["accuracy"], "test_missing": r.metrics["test_missing"]}
                for fold, per_seed in zip(folds, grid) for seed, r in enumerate(per_seed)]
        entries.append({"rule": rule, "modalities": mods, "seconds": seconds, "load_seconds": load_seconds,
                        "runs": runs, "params": grid[0][0].metrics["joint"]["params"],
                        "ratio_to_late": seconds / late["seconds"] if late["seconds"] else None,
                        "target_seconds": JOINT_TARGET_SECONDS})
        log(f"  joint {rule}: {len(runs)} runs in {seconds:.1f} s (fits " +
            " ".join(f"{r['fit_seconds']:.1f}" for r in runs) + " s)")
    del data
    return {"late": late, "rules": entries, "load_seconds": load_seconds}


def run_bench(out, videos: int, seeds: int, head: str = "lstm", log=print, cv="fixed", jobs: int = 0,
              joint=JOINT_RULES) -> dict:
    """Build (or reuse) the synthetic cache under `out`, train and fuse everything, return the timings.

    `jobs`: runs of one modality trained at a time (`classify.train.train_runs`; 0 = one per core)."""
    cv = protocol.parse_cv(cv)
    jobs_used = effective_jobs(jobs)
    out = Path(out)
    load_before = list(os.getloadavg())
    t_all = time.perf_counter()
    build_seconds = None
    if not _cache_matches(out, videos):
        t = time.perf_counter()
        synthetic_cache(out, videos, MODALITIES + ("text",), signal=True)
        build_seconds = time.perf_counter() - t
        log(f"built a synthetic cache of {videos} videos in {build_seconds:.1f} s under {out / 'features'}")
    manifest = write_synthetic_manifest(out / "manifest.csv", videos, groups=cv != protocol.FIXED)
    shutil.rmtree(out / "runs", ignore_errors=True)  # always train afresh: reused runs would time nothing
    labels = Labels.from_manifest(manifest)
    t = time.perf_counter()
    folds = protocol.fold_labels(labels, cv)
    folds_seconds = time.perf_counter() - t

    t_table = time.perf_counter()
    store = FeatureStore(out)
    rows = []
    for m in MODALITIES:
        t = time.perf_counter()
        feats = store.get(m)
        load_seconds = time.perf_counter() - t
        estimator = make_head(head)
        max_steps = estimator.max_steps if isinstance(estimator, LSTMHead) else None
        t = time.perf_counter()
        store.get(m, max_steps)
        pool_seconds = time.perf_counter() - t
        row = {"modality": m, "videos": len(feats.ids), "shape": list(feats.x.shape), "load_seconds": load_seconds,
               "pool_seconds": pool_seconds, "seeds": []}
        t = time.perf_counter()
        grid = train_runs(out, folds, m, head, list(range(seeds)), store=store, jobs=jobs)
        row["train_seconds"] = time.perf_counter() - t
        for fold, per_seed in zip(folds, grid):
            for seed, run in enumerate(per_seed):
                r = run.metrics
                row["seeds"].append({"seed": seed, "fold": fold.tag or None, "fit_seconds": r["fit_seconds"],
                                     "epochs": r.get("epochs"), "best_epoch": r.get("best_epoch"),
                                     "test_accuracy": r["accuracy"], "val_accuracy": r["val"]["accuracy"]})
                log(f"  {m:<6} seed {seed}{' ' + fold.tag if fold.tag else ''}: fit {r['fit_seconds']:6.1f} s, "
                    f"{r.get('epochs')} epochs, test accuracy {100 * r['accuracy']:.1f} %")
        log(f"  {m}: {len(folds) * seeds} runs in {row['train_seconds']:.1f} s ({jobs_used} at a time)")
        rows.append(row)
    del store  # frees the last modality's arrays before fusing (fusion reads only the runs)
    fusions = []
    for combo in FUSIONS:
        entry = {"modalities": list(combo), "rule": "weighted", "seeds": []}
        for fold in folds:
            for seed in range(seeds):
                t = time.perf_counter()
                res = fuse(out, fold, list(combo), head, "weighted", seed)
                j = res.metrics["joint"]
                entry["seeds"].append({"seed": seed, "fold": fold.tag or None, "seconds": time.perf_counter() - t,
                                       "test_accuracy": j["accuracy"], "weights": j["weights"]})
        fusions.append(entry)
    t = time.perf_counter()
    table = build_table(out, labels, list(range(seeds)), head, "weighted", cv=cv, jobs=jobs)
    assembly_seconds = time.perf_counter() - t
    table_seconds = time.perf_counter() - t_table
    joint_result = None
    if joint:
        joint_result = run_joint_bench(out, folds, seeds, joint, head, jobs,
                                       {r["modality"]: r["train_seconds"] for r in rows}, log)
    import torch

    cells = [{k: c.get(k) for k in ("row", "column", "status", "n_test", "accuracy", "ci95", "best_single",
                                    "p_joint_vs_best_single")} for c in table["cells"]]
    return {"videos": videos, "seeds": seeds, "head": head, "head_params": make_head(head).get_params(),
            "protocol": table["protocol"], "jobs": jobs_used, "folds_seconds": folds_seconds, "assembly_seconds": assembly_seconds,
            "target_seconds": TARGET_SECONDS["fixed" if cv == protocol.FIXED else "cv"], "cells": cells,
            "build_seconds": build_seconds, "table_seconds": table_seconds,
            "total_seconds": time.perf_counter() - t_all,
            "load_seconds": sum(r["load_seconds"] + r["pool_seconds"] for r in rows),
            "fit_seconds": sum(s["fit_seconds"] for r in rows for s in r["seeds"]),
            "train_seconds": sum(r["train_seconds"] for r in rows),
            "fuse_seconds": sum(s["seconds"] for f in fusions for s in f["seeds"]),
            "modalities": rows, "fusions": fusions, "joint": joint_result, "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": list(os.getloadavg()),
            "machine": platform.platform()}


def _joint_lines(joint: dict | None) -> list[str]:
    if not joint:
        return []
    late = joint["late"]
    lines = [f"late weighted {'+'.join(late['modalities'])} (its single runs trained + fused): {late['seconds']:.1f} s, "
             f"mean joint accuracy {100 * late['mean_test_accuracy']:.1f} %"]
    for e in joint["rules"]:
        acc = sum(r["test_accuracy"] for r in e["runs"]) / len(e["runs"])
        epochs = "/".join(str(r["epochs"]) for r in e["runs"])
        lines.append(f"joint {e['rule']} {'+'.join(e['modalities'])}: {e['seconds']:.1f} s for {len(e['runs'])} runs "
                     f"(loading {e['load_seconds']:.1f} s; epochs {epochs}), mean test accuracy {100 * acc:.1f} %, "
                     f"{e['ratio_to_late']:.2f}x the late rule; target < {e['target_seconds']} s")
    return lines


def format_report(result: dict) -> str:
    lines = [f"{'modality':<9}{'videos':>7}  {'shape':<15}{'load s':>7}{'pool s':>7}  fit s per seed"
             f"{'':<14}{'mean acc':>9}"]
    for r in result["modalities"]:
        fits = " ".join(f"{s['fit_seconds']:5.1f}" for s in r["seeds"])
        acc = sum(s["test_accuracy"] for s in r["seeds"]) / max(len(r["seeds"]), 1)
        lines.append(f"{r['modality']:<9}{r['videos']:>7}  {str(tuple(r['shape'])):<15}{r['load_seconds']:>7.1f}"
                     f"{r['pool_seconds']:>7.1f}  {fits:<28}{100 * acc:>8.1f} %")
    for f in result["fusions"]:
        acc = sum(s["test_accuracy"] for s in f["seeds"]) / max(len(f["seeds"]), 1)
        secs = sum(s["seconds"] for s in f["seeds"])
        lines.append(f"fuse {'+'.join(f['modalities'])} ({f['rule']}): {secs:.1f} s for {len(f['seeds'])} runs, "
                     f"mean joint accuracy {100 * acc:.1f} %")
    for c in result["cells"]:
        if c["status"] == "ok":
            p = c["p_joint_vs_best_single"]
            lines.append(f"  table cell {c['row']} {c['column']}: {100 * c['accuracy']['mean']:.2f} ± "
                         f"{100 * c['accuracy']['std']:.2f} [{100 * c['ci95'][0]:.1f}, {100 * c['ci95'][1]:.1f}] on "
                         f"{c['n_test']} videos" + ("" if p is None else f"; p vs {c['best_single']} {p:.4f}"))
    lines += _joint_lines(result.get("joint"))
    lines.append(f"load average (1, 5, 15 min) before {result['load_average_before']}, after "
                 f"{result['load_average_after']} on {result['cpus']} CPUs; torch threads {result['torch_threads']}")
    prot = result["protocol"]
    folds = "" if prot["cv"] == "fixed" else f" x {prot['folds']} folds ({protocol.title(prot['cv'], prot['folds'])})"
    lines.append(f"table ({len(result['modalities'])} modalities x {result['seeds']} seeds{folds} + "
                 f"{len(result['fusions'])} fusions): {result['table_seconds']:.1f} s "
                 f"(load {result['load_seconds']:.1f} s, training {result['train_seconds']:.1f} s with "
                 f"{result['jobs']} run(s) at a time: fit {result['fit_seconds']:.1f} s summed over runs, "
                 f"fuse {result['fuse_seconds']:.1f} s, folds {result['folds_seconds']:.1f} s, assembling the table "
                 f"with intervals and tests {result['assembly_seconds']:.1f} s); target < {result['target_seconds']} s")
    if result["build_seconds"] is not None:
        lines.append(f"building the synthetic cache took {result['build_seconds']:.1f} s more (not part of the table)")
    lines.append(f"whole command (cache build included): {result['total_seconds']:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.classify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=31761)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cv", default="fixed", help="fixed (default), K or groups: the protocol of the timed table")
    parser.add_argument("--jobs", type=int, default=0, help="runs trained at a time (default 0: one per core)")
    parser.add_argument("--out", default="work/bench-classify", help="folder for the synthetic cache, runs and JSON")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic cache and the runs afterwards")
    parser.add_argument("--joint", default=",".join(JOINT_RULES),
                        help="joint rules to time on rgb+flow+audio+text after the table (default: all three; none)")
    args = parser.parse_args(argv)
    try:
        joint = parse_joint(args.joint)
    except ValueError as exc:
        parser.error(str(exc))
    if args.videos < 15 or args.seeds < 1:
        parser.error("need --videos >= 15 (every class in every split) and --seeds >= 1")
    try:
        protocol.parse_cv(args.cv)
    except ValueError as exc:
        parser.error(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = run_bench(out, args.videos, args.seeds, cv=args.cv, jobs=args.jobs, joint=joint)
    finally:
        if not args.keep:
            for sub in ("features", "runs"):
                shutil.rmtree(out / sub, ignore_errors=True)
            (out / "manifest.csv").unlink(missing_ok=True)
    print(format_report(result))
    (out / "bench_classify.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out / 'bench_classify.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
