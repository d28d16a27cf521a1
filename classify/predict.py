"""Apply a model bundle (`classify.export`) to new videos, labelled or not.

    python -m classify.predict --model MODEL_DIR --manifest NEW.csv --work W2 [--jobs N]
                               [--device auto] [--weights weights]

Runs whatever stages and features are missing for NEW's videos, with the bundle's own settings
(frames, size, resize, flow backend and bound, audio front end, caption cleaning, text model),
then the bundle's heads and fusion, and writes `W2/predictions.csv`:

    id, weights ("pretrained", or "random" when any backbone ran with random weights: such
    predictions test the pipeline only), predicted, p_<class> (one column per class, the fused probabilities),
    <m>_predicted, <m>_probability (each modality's own label and its probability),
    modalities (the ones used, '+'-joined), missing ("audio: no audio stream; text: no caption")

(`missing` is free text, guarded against spreadsheet formulas as `extract.csvcells` says; ids
and class names are keys, written as they are.)

A video lacking a modality is predicted from the ones it has (the fusion renormalises over them;
a joint rule's head puts its learned "absent" vector there, and its `<m>_` columns are that head
given only modality m);
one with none gets an empty prediction and its reasons. Checkpoints are checked before anything
is embedded: a backbone whose SHA-256 differs from the bundle's, or a work folder holding
features made with other settings, is refused (exit 2) with the difference named. The bundle is
checked whole before any work (docs/bundles.md). The manifest needs only `id` and `path`
(`python -m extract.manifest folder ROOT --unlabelled` writes one); `label` and `split` may be
empty or absent.

W2 must be a work folder of its own: a training work folder (one with `runs/`) is refused, and so
is a video whose id already has stage outputs in W2 made from another source file (the stages'
`<key>.source.json` records say which), since predicting would overwrite them.

Exit codes: 0 every video predicted; 1 some videos could not be (failed in a stage or have no
modality left), the rest are predicted; 2 the run failed (bad bundle or manifest, other weights).
"""
from __future__ import annotations

import dataclasses
import io
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from classify import bundle as bundle_files
from classify.bundle import BUNDLE_FORMAT, BundleError  # noqa: F401 (re-exported)
from extract import cli, csvcells, durable, provenance, stage
from extract.layout import Work
from extract.manifest import Video, read_manifest
from features import backbones, cache
from features import modalities as registry
from features.extract import extract_features, summary_line

log = logging.getLogger(__name__)
# Cache attributes that may differ between training and prediction without changing the features' meaning
# beyond float rounding: where and in what precision the backbone ran.
RUNTIME_ATTRS = cache.INFORMATIONAL_ATTRS | {"dtype"}


class BundleMismatch(ValueError):
    """The weights or settings found here are not the ones the bundle was trained with."""


def load_bundle(folder) -> bundle_files.Loaded:
    """The checked bundle (`classify.bundle.load`: hashes, paths, arrays, class counts)."""
    return bundle_files.load(folder)


def check_work(bundle: dict, videos: Sequence[Video], work: Path) -> None:
    """Refuse a work folder whose data predicting would overwrite: a training one (with `runs/`),
    or one holding stage outputs of a listed id made from another source file."""
    w = Work(work)
    if w.runs.is_dir():
        raise cli.UserError(f"{work} holds trained runs (a training work folder); predict into a new folder, "
                            f"predicting here would overwrite its stage outputs and feature caches")
    clashes = []
    for v in videos:
        try:
            here = provenance.provenance(v.path)["path"]
        except OSError:
            continue  # the stage reports the unreadable video
        for name in bundle["stages"]:
            record = provenance.read_source_record(w.output(name, v.id, ".npz"))
            there = ((record or {}).get("source") or {}).get("path")
            if there and there != here:
                clashes.append(f"{v.id} ({name}: {there})")
                break
    if clashes:
        raise cli.UserError(f"{work} already holds other videos under the ids {', '.join(clashes[:5])}"
                            f"{' ...' if len(clashes) > 5 else ''}; predict into a new work folder or rename them")


def _stage_modules() -> dict:
    return {m.source.module.NAME: m.source.module for m in registry.all_modalities()
            if isinstance(m.source, registry.StageSource)}


def run_stages(bundle: dict, videos: Sequence[Video], work: Path, jobs: int,
               weights: str = "weights") -> dict[str, stage.Summary]:
    """Every stage the bundle's modalities read, with the bundle's recorded settings; a stage
    with a network of its own (the faces stage's detector) takes its files from `weights`, the
    folder predict was given (a detector has no random variant, whatever the bundle's features had)."""
    modules = _stage_modules()
    summaries = {}
    for name, recorded in bundle["stages"].items():
        module = modules[name]
        if "weights" in {f.name for f in dataclasses.fields(module.STAGE.settings_type)}:
            recorded = {**recorded, "weights": str(Path(weights).resolve())}
        settings = module.STAGE.settings_type(**recorded)
        summaries[name] = stage.run_stage(module.STAGE, videos, work, settings, jobs=jobs)
        print(summaries[name].line(work), flush=True)
    return summaries


def _check_cache(modality: str, expected: dict, work: Path) -> None:
    found = cache.attributes(work, modality)
    diff = [f"{k}: {expected.get(k)!r} in the bundle, {found.get(k)!r} here"
            for k in sorted((set(expected) | set(found)) - RUNTIME_ATTRS) if expected.get(k) != found.get(k)]
    if diff:
        raise BundleMismatch(f"{modality} features in {work} differ from the bundle's: " + "; ".join(diff))


def embed(bundle: dict, videos: Sequence[Video], work: Path, weights: str, device: str, loaders: int) -> dict:
    """The feature stage for each modality, with the bundle's backbone, checked by checksum first."""
    counts = {}
    for m in bundle["modalities"]:
        attrs = bundle["features"][m]["cache"]
        options = attrs.get("options", {})
        random = attrs.get("weights") == "random"
        backbone = backbones.load_backbone(m, "random" if random else weights, device=device,
                                           seed=attrs.get("seed") or 0, **options)
        if backbone.sha256 != attrs["sha256"]:
            raise BundleMismatch(
                f"{m}: the model was trained on features of {attrs['checkpoint']} (sha256 {attrs['sha256'][:16]}...), "
                f"but {backbone.checkpoint} here has sha256 {backbone.sha256[:16]}...; use the same weights "
                f"(--weights DIR) or export a model trained with these")
        counts[m] = extract_features(m, videos, work, device=device, loaders=loaders, backbone=backbone, **options)
        print(summary_line(m, counts[m]), flush=True)
        _check_cache(m, attrs, work)
    return counts


def predict_proba(loaded: bundle_files.Loaded, videos: Sequence[Video], work: Path):
    """(ids, fused [n, K] with NaN rows for unpredictable videos, per-modality [M, n, K], reasons)."""
    bundle = loaded.bundle
    ids = [v.id for v in videos]
    index = {vid: i for i, vid in enumerate(ids)}
    names, k = bundle["modalities"], len(bundle["class_names"])
    P = np.full((len(names), len(ids), k), np.nan)
    reasons: dict[str, list[str]] = {vid: [] for vid in ids}
    if loaded.joint is not None:
        return _joint_proba(loaded.joint, names, ids, work, P, reasons)
    for j, m in enumerate(names):
        head = loaded.heads[m]
        feats = cache.load(work, m)
        rows = [i for i, vid in enumerate(feats.ids) if vid in index]
        if rows:
            P[j, [index[feats.ids[i]] for i in rows]] = head.predict_proba(feats.x[rows], feats.lengths[rows])
        for vid, reason in cache.missing(work, m).items():
            if vid in reasons:
                reasons[vid].append(f"{m}: {reason}")
    fusion = loaded.fusion
    have = ~np.isnan(P[:, :, 0]).all(axis=0)
    fused = np.full((len(ids), k), np.nan)
    if have.any():
        fused[have] = fusion.apply(P[:, have])
    return ids, fused, P, reasons


def _joint_proba(head, names, ids, work: Path, P: np.ndarray, reasons: dict):
    """`predict_proba` for a joint rule's bundle: the head on every modality a video has (fused),
    and on each modality alone (the per-modality columns); a video lacking one is predicted from
    the others."""
    from classify.joint import gather

    X = gather({m: cache.load(work, m) for m in names}, ids)
    for m in names:
        for vid, reason in cache.missing(work, m).items():
            if vid in reasons:
                reasons[vid].append(f"{m}: {reason}")
    fused = np.full(P.shape[1:], np.nan)
    have = np.any([lengths > 0 for _, lengths in X.values()], axis=0)
    if have.any():
        fused[have] = head.predict_proba({m: (x[have], lengths[have]) for m, (x, lengths) in X.items()})
    for j, (m, (x, lengths)) in enumerate(X.items()):
        has = lengths > 0
        if has.any():
            P[j, has] = head.predict_proba({m: (x[has], lengths[has])})
    return ids, fused, P, reasons


def random_modalities(bundle: dict) -> list[str]:
    """The bundle's modalities whose backbone had random weights (their features test the pipeline only)."""
    caches = {m: bundle["features"][m]["cache"] for m in bundle["modalities"]}
    return [m for m, a in caches.items() if str(a.get("weights", "")).lower() == "random"]


def predictions_csv(bundle: dict, ids, fused, P, reasons) -> str:
    names, classes = bundle["modalities"], bundle["class_names"]
    weights = "random" if random_modalities(bundle) else "pretrained"
    buf = io.StringIO()
    writer = csvcells.writer(buf)
    writer.writerow(["id", "weights", "predicted", *[f"p_{c}" for c in classes],
                     *[c for m in names for c in (f"{m}_predicted", f"{m}_probability")], "modalities", "missing"])
    for i, vid in enumerate(ids):
        ok = not np.isnan(fused[i, 0])
        row = [vid, weights, classes[int(fused[i].argmax())] if ok else "",
               *([f"{p:.6f}" for p in fused[i]] if ok else [""] * len(classes))]
        used = []
        for j, m in enumerate(names):
            if np.isnan(P[j, i, 0]):
                row += ["", ""]
            else:
                used.append(m)
                row += [classes[int(P[j, i].argmax())], f"{P[j, i].max():.6f}"]
        writer.writerow(row + ["+".join(used), csvcells.guard("; ".join(reasons[vid]))])
    return buf.getvalue()


def predict(model, videos: Sequence[Video], work, jobs: int = 0, device: str = "auto",
            weights: str = "weights", loaders: int = 1) -> dict:
    """Stages, features, heads and fusion for `videos`; writes W/predictions.csv; returns counts."""
    model, work = Path(model), Path(work).resolve()
    loaded = load_bundle(model)
    bundle = loaded.bundle
    check_work(bundle, videos, work)
    banner = cache.banner_for_attributes({m: bundle["features"][m]["cache"] for m in bundle["modalities"]})
    if banner:  # the bundle's heads were trained on features of untrained networks
        print(banner, flush=True)
    summaries = run_stages(bundle, videos, work, jobs, weights)
    embed(bundle, videos, work, weights, device, loaders)
    ids, fused, P, reasons = predict_proba(loaded, videos, work)
    out = Work(work).predictions
    durable.atomic_write_bytes(out, predictions_csv(bundle, ids, fused, P, reasons).encode("utf-8"))
    predicted = int((~np.isnan(fused[:, 0])).sum())
    stage_failed = sum(s.failed for s in summaries.values())
    return {"videos": len(ids), "predicted": predicted, "unpredictable": len(ids) - predicted,
            "stage_failures": stage_failed, "path": str(out)}


def parser():
    p = cli.parser("python -m classify.predict", __doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a bundle folder written by classify.export")
    p.add_argument("--manifest", required=True, help="the videos to predict (id,path suffice)")
    p.add_argument("--work", required=True, help="work folder for their stages and features")
    p.add_argument("--jobs", type=int, default=0, help="videos in parallel in the stages (0: all cores)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--weights", default="weights", help="checkpoint folder (ignored for random-weight bundles)")
    p.add_argument("--loaders", type=int, default=1, help="DataLoader workers of the feature stage")
    return p


def _main(args) -> int:
    videos = read_manifest(args.manifest, require_split=False, require_label=False)
    s = predict(args.model, videos, args.work, args.jobs, args.device, args.weights, args.loaders)
    print(f"predicted {s['predicted']} of {s['videos']} videos ({s['unpredictable']} without any modality) "
          f"-> {s['path']}")
    return cli.EXIT_SOME_FAILED if s["unpredictable"] or s["stage_failures"] else cli.EXIT_OK


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose, level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
