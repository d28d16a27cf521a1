"""`make report`: one static HTML page to look at the results and at the test videos.

    python -m classify.report --manifest M --work W [--table W/table/fixed-lstm] [--out W/report]

Reads what `classify.table --out DIR` wrote (`DIR/table.md`, `table.json`, the figures; DIR is
by default the table folder under `W/table/` written last, and the command says which) and the
runs it used, and writes `W/report/index.html` with everything it shows beside it (figures,
thumbnail JPEGs, `videos.csv`): it opens from disk, with no server, no network and nothing
fetched from elsewhere.

The page: the results table with its notes and warnings, the confusion matrices and per-class
recall figures, the fusion weights, and a browser of the test videos of the table's largest
joint model: each video once, with its class probabilities averaged over the seeds (under
cross-validation, from the fold that tested it); a strip of 4 thumbnails from the frames stage,
the caption, the true label, each modality's class probabilities as small bars, the fused
prediction, filters (errors only, true class, predicted class), sorting by confidence and a CSV
download of the same rows. The HTML comes from a Jinja2 template
(`classify/templates/report.html.j2`, autoescaped); the results table's text is rendered with
no raw HTML (`safe_markdown`), since it carries names from the manifest. The page's script is a
few lines of plain JavaScript. The folder is replaced atomically.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from classify import faces_view, published
from classify.runs import DEFAULT_MANIFEST, DEFAULT_WORK, read_json
from classify.thumbs import write_thumbs
from extract import cli, frames
from extract.durable import atomic_dir
from extract.layout import as_work, check_out, file_key
from extract.manifest import read_manifest
from features import cache

THUMBS = 4
THUMB_SIZE = 64


def _browser_run(table: dict) -> tuple[dict, Path]:
    """The cell whose test videos the page shows: the ok joint cell with the most modalities
    (and its first run)."""
    cells = [c for c in table["cells"] if c["status"] == "ok"]
    if not cells:
        raise ValueError("the table has no computed cell; run `make table` first")
    joints = [c for c in cells if c["kind"] == "joint"]
    cell = max(joints, key=lambda c: len(c["modalities"])) if joints else cells[0]
    return cell, Path(cell["runs"][0])


def _predictions(run: Path) -> tuple[list[str], np.ndarray]:
    with np.load(run / "predictions.npz", allow_pickle=False) as p:
        return p["test_ids"].tolist(), p["test_proba"]


def _thumbnails(work, video_id: str, out: Path) -> list[str]:
    """Up to 4 small JPEGs of the frames stage's output, written into out/thumbs; their relative paths."""
    try:
        clip = frames.load(work, video_id)
    except Exception:  # no frames (failed or not extracted): the row says so
        return []
    picks = np.linspace(0, len(clip) - 1, THUMBS).round().astype(int)
    return write_thumbs((clip[i] for i in dict.fromkeys(picks.tolist())), out, f"thumbs/{file_key(video_id)}",
                        THUMB_SIZE, 80)


def _bars(proba: np.ndarray, classes: list[str]) -> list[dict]:
    top = int(np.argmax(proba))
    return [{"name": c, "p": float(p), "top": i == top} for i, (c, p) in enumerate(zip(classes, proba))]


_NO_MARKUP = ("html", "entity", "link", "image_link", "reference", "image_reference", "short_reference",
              "short_image_ref", "autolink", "automail")


def safe_markdown(text: str) -> str:
    """Markdown to HTML with no raw HTML, no links and no images: the table's text carries names
    from the manifest (groups, classes), which must show as text, never run as markup. Every
    character that HTML reads is escaped first, and the Markdown patterns that make tags from
    text are switched off."""
    import html

    import markdown

    md = markdown.Markdown(extensions=["tables"])
    for name in _NO_MARKUP:
        if name in md.inlinePatterns:
            md.inlinePatterns.deregister(name)
    if "html_block" in md.preprocessors:
        md.preprocessors.deregister("html_block")
    return md.convert(html.escape(text, quote=True))


VIDEOS_CSV = "videos.csv"


def _write_videos_csv(path: Path, rows: list[dict], classes: list[str]) -> None:
    """The browser's videos as a CSV download: id, true and predicted class, confidence, fused probabilities."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "true", "predicted", "confidence", "error"] + [f"p_{c}" for c in classes])
        for r in rows:
            w.writerow([r["id"], r["true"], r["pred"], f"{r['confidence']:.6f}", int(r["error"])]
                       + [f"{b['p']:.6f}" for b in r["fused"]])


def _mean_proba(runs: list[Path]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Each test video's class probabilities averaged over the runs that tested it (every seed;
    in cross-validation each video is in one fold's test part, so this is its out-of-fold
    prediction), in first-seen order."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for run in runs:
        for vid, p in zip(*_predictions(run)):
            sums[vid] = sums.get(vid, 0) + np.asarray(p, dtype=np.float64)
            counts[vid] = counts.get(vid, 0) + 1
    return list(sums), {v: sums[v] / counts[v] for v in sums}


def _browser_predictions(cell: dict) -> tuple[list[str], dict, dict[str, dict]]:
    """(ids, fused mean probabilities, {modality: mean probabilities}) over all runs of the cell."""
    runs = [Path(r) for r in cell["runs"]]
    ids, fused = _mean_proba(runs)
    if cell["kind"] == "joint":
        singles: dict[str, list[Path]] = {}
        for run in runs:
            for m, p in read_json(run / "settings.json").get("runs", {}).items():  # a joint head has no single runs
                singles.setdefault(m, []).append(Path(p))
        per_modality = {m: _mean_proba(paths)[1] for m, paths in singles.items()}
    else:
        per_modality = {cell["modalities"][0]: fused}
    return ids, fused, per_modality


def _which_runs(table: dict) -> str:
    seeds = len(table["seeds"])
    folds = len(table.get("folds") or [])
    what = f"the mean of the class probabilities over {seeds} seed{'s' if seeds != 1 else ''}"
    return what + (f"; each video's out-of-fold prediction (the fold that tested it, of {folds})" if folds else "")


def page_context(work, manifest, table: dict, table_dir: Path, out: Path) -> dict:
    """Everything the template shows, from the table in `table_dir`; writes the thumbnails and
    the videos' CSV into `out`."""
    videos = {v.id: v for v in read_manifest(manifest)}
    classes = table["class_names"]
    cell, run = _browser_run(table)
    ids, fused, per_run = _browser_predictions(cell)
    runs = list(per_run)
    missing = {m: cache.missing(work, m) if cache.exists(work, m) else {} for m in runs}
    (out / "thumbs").mkdir()
    with_faces = as_work(work).stage("faces").is_dir()
    face_probs, face_note = faces_view.probabilities(work, ids) if with_faces else ({}, None)
    rows = []
    for vid in ids:
        proba = fused[vid]
        v = videos.get(vid)
        true = v.label if v else ""
        pred = classes[int(np.argmax(proba))]
        per_modality = []
        for m in runs:
            p = per_run[m].get(vid)
            per_modality.append({"name": m, "bars": _bars(p, classes) if p is not None else [],
                                 "reason": missing[m].get(vid, "not scored")})
        rows.append({"id": vid, "true": true, "pred": pred, "confidence": float(np.max(proba)), "error": pred != true,
                     "caption": v.text if v else None, "thumbs": _thumbnails(work, vid, out),
                     "face": faces_view.face_column(work, vid, out, face_probs, face_note) if with_faces else None,
                     "fused": _bars(proba, classes), "per_modality": per_modality})
    _write_videos_csv(out / VIDEOS_CSV, rows, classes)
    md = (table_dir / "table.md").read_text(encoding="utf-8")
    if table.get("banner") and md.startswith(table["banner"]):
        md = md[len(table["banner"]):]
    weights = [{"name": f"{c['row']} {c['column']}", "rule": c.get("rule", ""), "weights": c["weights"]}
               for c in table["cells"] if c["kind"] == "joint" and c["status"] == "ok" and c.get("weights")]
    figures = []
    for name, alt in (("confusion_joint.png", "confusion matrices of the joint models"),
                      ("per_class_recall.png", "per-class recall by modality")):
        src = table_dir / name
        if src.is_file():
            shutil.copy2(src, out / name)
            figures.append({"file": name, "alt": alt})
    errors = sum(r["error"] for r in rows)
    description = (f"{cell['row']} {cell['column']}: {'+'.join(cell['modalities'])}, {cell['head']} heads"
                   + (f", {cell.get('rule')} fusion" if cell["kind"] == "joint" else "")
                   + f". Each video once, with {_which_runs(table)}: accuracy of these predictions "
                   f"{100 * (len(rows) - errors) / max(len(rows), 1):.2f} % on {len(rows)} videos ({errors} errors); "
                   f"the table's figure is the mean of the runs' accuracies.")
    return {
        "title": f"{table.get('dataset_name') or published.DATASET_NAMES.get(table['dataset'], 'this dataset')} "
                 "benchmark report",
        "warnings": [w for w in (table.get("small_test_warning"), table.get("published_warning")) if w], "work": str(as_work(work).root), "manifest": str(manifest),
        "created": time.strftime("%Y-%m-%d %H:%M"), "banner": table.get("banner"),
        "table_html": safe_markdown(md), "figures": figures,
        "fusion_weights": weights,
        "weight_modalities": list(dict.fromkeys(m for w in weights for m in w["weights"])),
        "class_names": classes, "videos": rows,
        "faces": with_faces, "face_legend": faces_view.legend(),
        "browser": {"name": f"{cell['row']} {cell['column']} ({'+'.join(cell['modalities'])})",
                    "description": description, "modalities": list(runs), "run": str(run),
                    "csv": VIDEOS_CSV},
    }


def render(context: dict) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("classify", "templates"), autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("report.html.j2").render(**context)


def read_table(table_dir) -> dict:
    """table.json of a folder `classify.table` wrote."""
    path = Path(table_dir) / "table.json"
    if not path.is_file():
        raise cli.UserError(f"{path} is missing: run `make table` (python -m classify.table --out "
                            f"{Path(table_dir)}) first")
    return read_json(path)


REPORT_MARKER = ".dmver-report"
# What a report folder held before it carried REPORT_MARKER (such a folder may still be replaced).
LEGACY_REPORT = frozenset({"index.html", "thumbs", "confusion_joint.png", "per_class_recall.png"})


def default_table(work) -> Path:
    """The table folder the report shows by default: the one written last under `W/table/`."""
    work = as_work(work)
    latest = work.latest_table()
    if latest is None:
        raise cli.UserError(f"no table under {work.tables}: run `make table` (python -m classify.table) first")
    return latest


def write_report(work, manifest, out=None, table_dir=None, force: bool = False) -> Path:
    """Write the report folder (atomically) for the table in `table_dir` (default: the one
    written last under `W/table/`, see `default_table`) and return the page's path. `out` is
    checked first (`layout.check_out`): a folder that is not a previous report is refused unless
    `force`, work-folder data always."""
    work = as_work(work)
    out = check_out(out if out else work.report, REPORT_MARKER, LEGACY_REPORT, force)
    table_dir = Path(table_dir) if table_dir else default_table(work)
    table = read_table(table_dir)
    with atomic_dir(out) as tmp:
        (tmp / REPORT_MARKER).write_text(json.dumps({"kind": "dmver-report", "work": str(work)}) + "\n",
                                         encoding="utf-8")
        (tmp / "index.html").write_text(render(page_context(work, manifest, table, table_dir, tmp)), encoding="utf-8")
    return out / "index.html"


def parser():
    p = cli.parser("python -m classify.report", __doc__.split("\n\n")[0])
    p.add_argument("--manifest", default=DEFAULT_MANIFEST)
    p.add_argument("--work", default=DEFAULT_WORK)
    p.add_argument("--table", help="the folder classify.table wrote (default: the one under WORK/table "
                                   "written last, e.g. WORK/table/fixed-lstm)")
    p.add_argument("--out", help="report folder (default WORK/report); replaced whole, so it must be new, empty "
                                 "or a previous report")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out that is not a previous report "
                                                        "(never a work folder's data)")
    return p


def _main(args) -> int:
    table_dir = Path(args.table) if args.table else default_table(args.work)
    if not args.table:
        print(f"showing the table {table_dir} (the one written last; --table DIR chooses another)")
    page = write_report(args.work, args.manifest, args.out, table_dir, args.force)
    print(f"wrote the report {page} (open it in a browser; it needs no server)")
    return cli.EXIT_OK


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return cli.run(lambda: _main(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
