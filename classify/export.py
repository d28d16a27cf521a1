"""Write a self-contained model bundle: trained heads + fusion + every setting needed to apply them.

    python -m classify.export --modalities rgb,flow,audio[,text] --manifest M --work W --out MODEL_DIR
                              [--head lstm] [--rule weighted] [--seed 0]

Trains (or reuses) the runs and the fusion exactly as `classify.fuse` does, then writes:

    MODEL_DIR/bundle.json        format, class names, head, rule, seed, package version, and per
                                 modality the head (class, hyper-parameters) and its arrays' file and
                                 the feature cache's settings (network, checkpoint name and sha256 or
                                 "random", seed, options, stage settings or caption cleaning); the
                                 stage settings by stage; the fusion (rule, weights); `files`: every
                                 other file with its SHA-256
    MODEL_DIR/bundle.sha256      the SHA-256 of bundle.json
    MODEL_DIR/heads/<m>.npz      each modality's trained head as plain arrays (no pickle)
    MODEL_DIR/fusion.npz         the stacking regression's coefficients (empty for other rules)
    MODEL_DIR/joint.npz          instead of heads/ and fusion.npz, for a joint rule (--rule early|tfn|xattn):
                                 the joint head's network tensors and standardisation statistics;
                                 bundle.json's `joint` describes it (class, hyper-parameters, modalities,
                                 dimensions; `classify.joint_state`)
    MODEL_DIR/card.md, card.json the model card: training manifest digest, protocol, validation and
                                 test metrics per modality and fused, the random-weights warning

`python -m classify.predict --model MODEL_DIR ...` applies it to new videos; docs/bundles.md says
what is checked then. The folder is written atomically (a killed export leaves no half bundle);
`--out` must be new, empty or a previous bundle (`--force` replaces another folder, never a work
folder's data).
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from classify import bundle as bundle_files
from classify import stats
from classify.data import SPLITS, Labels
from classify.fuse import ALL_RULES, fuse
from classify.joint import JOINT_RULES
from classify.heads import HEADS, head_state
from classify.runs import DEFAULT_MANIFEST, DEFAULT_WORK, read_json
from classify.train import run_path
from extract import claims, cli
from extract.durable import atomic_dir
from extract.layout import as_work, check_out
from features import cache
from features import modalities as registry
from features.extract import package_version

BUNDLE_FORMAT = bundle_files.BUNDLE_FORMAT


def manifest_digest(path) -> str:
    """SHA-256 of the training manifest file, as the card records it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def stage_settings(work, names) -> dict:
    """The recorded settings of each stage the modalities read (`W/<stage>/settings.json`)."""
    out = {}
    for name in names:
        path = as_work(work).stage(name) / claims.SETTINGS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the {name} stage never ran in {work}")
        out[name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def _card_markdown(card: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f} %"
    how = f"{card['rule']} joint head" if card.get("joint_params") else f"{card['head']} heads, {card['rule']} fusion"
    lines = [f"# Model card: {'+'.join(card['modalities'])} ({how})", ""]
    if card["random_weights"]:
        lines += [f"**{card['random_weights']}**", ""]
    if card.get("small_test_warning"):
        lines += [f"**Warning: {card['small_test_warning']}.**", ""]
    lines += [f"- Classes: {', '.join(card['class_names'])}",
              f"- Training data: `{card['manifest']}` (SHA-256 {card['manifest_sha256'][:16]}..., "
              f"{card['videos']['train']} train / {card['videos']['val']} val / {card['videos']['test']} test videos)",
              f"- Protocol: {card['protocol']}",
              f"- Seed: {card['seed']}; package version {card['package_version']}; exported {card['created']}",
              "", "| model | val accuracy | test accuracy | test macro-F1 | test videos |", "|---|---|---|---|---|"]
    for name, m in card["metrics"].items():
        lines.append(f"| {name} | {pct(m['val_accuracy'])} | {pct(m['accuracy'])} | {pct(m['macro_f1'])} | {m['n']} |")
    if card.get("joint_params"):
        params = ", ".join(f"{k} {v}" for k, v in card["joint_params"].items())
        lines += ["", f"Joint head ({card['rule']}: one classifier on all the modalities, early-stopped on the "
                      f"validation split; a modality's row is the same head given only that modality): {params}.", ""]
    else:
        weights = ", ".join(f"{m} {w:.2f}" for m, w in card["fusion_weights"].items())
        lines += ["", f"Fusion weights ({card['rule']}, chosen on the validation split): {weights}.", ""]
    return "\n".join(lines)


def export(work, manifest, modalities: list[str], out, head: str = "lstm", rule: str = "weighted",
           seed: int = 0, force: bool = False) -> Path:
    """Train or reuse the runs and the fusion, and write the bundle folder `out` (checked first:
    `layout.check_out`)."""
    import joblib

    out = check_out(out, bundle_files.BUNDLE_MARKER, bundle_files.LEGACY_BUNDLE, force)
    labels = Labels.from_manifest(manifest)
    result = fuse(work, labels, modalities, head, rule, seed)
    fused = result.metrics
    caches = {m: cache.attributes(work, m) for m in modalities}
    stages = list(dict.fromkeys(s for m in modalities for s in registry.get(m).source.stages))
    files, features = {}, {}
    joint = fused["joint"]
    if rule in JOINT_RULES:  # one head on all the modalities: its network as arrays, its description as JSON
        head = None
        desc = read_json(result.path / "joint.json")
        with np.load(result.path / "joint.npz", allow_pickle=False) as z:
            files["joint.npz"] = bundle_files.npz_bytes({k: z[k] for k in z.files})
        features = {m: {"cache": caches[m]} for m in modalities}
        combined = {"joint": {**desc, "file": "joint.npz"}}
        # each modality's row: the joint head given only that modality (no validation score of its own)
        metrics = {m: {"val_accuracy": None, **pm} for m, pm in fused["per_modality"].items()}
    else:
        for m in modalities:
            desc, arrays = head_state(joblib.load(run_path(work, m, head, seed) / "model.joblib"))
            files[f"heads/{m}.npz"] = bundle_files.npz_bytes(arrays)
            features[m] = {"head_file": f"heads/{m}.npz", "head": desc, "cache": caches[m]}
        fusion_desc, fusion_arrays = joblib.load(result.path / "fusion.joblib").state()
        files["fusion.npz"] = bundle_files.npz_bytes(fusion_arrays)
        combined = {"fusion": {**fusion_desc, "file": "fusion.npz"}}
        runs = {m: read_json(run_path(work, m, head, seed) / "metrics.json") for m in modalities}
        metrics = {m: {"val_accuracy": r["val"]["accuracy"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                       "n": r["n"]} for m, r in runs.items()}
    bundle = {
        "format": BUNDLE_FORMAT, "package_version": package_version(), "class_names": labels.class_names,
        "head": head, "rule": rule, "seed": seed, "modalities": list(modalities), "features": features,
        "stages": stage_settings(work, stages), **combined,
    }
    metrics["fused"] = {"val_accuracy": joint["val_accuracy"], "accuracy": joint["accuracy"],
                        "macro_f1": joint["macro_f1"], "n": joint["n"]}
    card = {
        "modalities": list(modalities), "head": head, "rule": rule, "seed": seed, "class_names": labels.class_names,
        "manifest": str(manifest), "manifest_sha256": manifest_digest(manifest), "labels_digest": labels.digest,
        "videos": {s: len(labels.ids(s)) for s in SPLITS},
        "protocol": "the manifest's fixed train/val/test split; heads early-stopped and fusion chosen on val, "
                    "test only scored",
        "metrics": metrics, "fusion_weights": joint.get("weights", {}), "package_version": package_version(),
        "joint_params": joint.get("params"), "test_missing": fused.get("test_missing"),
        "random_weights": cache.random_weights_banner(work, modalities),
        "small_test_warning": stats.small_test_warning(len(labels.ids("test"))),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    files["card.json"] = (json.dumps(card, indent=2) + "\n").encode("utf-8")
    files["card.md"] = _card_markdown(card).encode("utf-8")
    with atomic_dir(out) as tmp:
        bundle_files.write(tmp, bundle, files)
    return out


def parser():
    p = cli.parser("python -m classify.export", __doc__.split("\n\n")[0])
    p.add_argument("--modalities", required=True, help="comma-separated, e.g. rgb,flow,audio,text")
    p.add_argument("--manifest", default=DEFAULT_MANIFEST)
    p.add_argument("--work", default=DEFAULT_WORK)
    p.add_argument("--out", required=True, help="the bundle folder to write: new, empty or a previous bundle")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out that is not a bundle "
                                                        "(never a work folder's data)")
    p.add_argument("--head", default="lstm", choices=HEADS)
    p.add_argument("--rule", default="weighted", choices=ALL_RULES,
                   help="late rules mean, weighted (default), stack; joint heads early, tfn, xattn")
    p.add_argument("--seed", type=int, default=0)
    return p


def _main(args) -> int:
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    out = export(args.work, args.manifest, modalities, args.out, args.head, args.rule, args.seed, args.force)
    how = f"{args.rule} joint head" if args.rule in JOINT_RULES else f"{args.head} heads, {args.rule} fusion"
    print(f"wrote the model bundle {out} ({', '.join(modalities)}; {how}); "
          f"card: {out / 'card.md'}")
    return cli.EXIT_OK


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose, level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
