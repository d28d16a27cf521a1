"""The seed's results table, reproduced on the features in a work folder.

    python -m classify.table [--manifest M] [--work W] [--seeds 5] [--dataset dmver|iemocap|music-video|other]
                             [--head lstm] [--rule weighted] [--extra-rows auto|none|NAMES] [--out DIR]
                             [--joint early,tfn,xattn|none]
                             [--cv fixed|K|groups] [--metric accuracy|balanced_accuracy|macro_f1]

The work is split by job: `classify.rows` (the rows: the published three as data, the others
derived from the modality registry), `classify.cells` (training or reusing the runs, fusing,
scoring each cell with its interval and significance test), `classify.render`
(Markdown, CSV), `classify.figures` (PNG figures) and `classify.published` (the published
numbers). This module is the command: it picks the rows, builds the table and writes it.

`--extra-rows auto` (default) shows the rows beyond the published table whose modalities all
have a cache; `--extra-rows "R(2+1)D,HuBERT"` names them (a named row without its cache gives
n/a cells); `none` hides them. `--joint` (default `early,tfn,xattn`) adds one row per joint head
("All modalities, early", ...: one classifier on all the `in_all` modalities with a cache,
`classify.joint_run`); `--joint none` leaves them out. `--metric` chooses the headline of the Markdown; the JSON keeps
all three. Runs already in `W/runs/` are reused, so a second call only fuses, tests and draws.

Writes (each file atomically) `DIR/table.md` (also printed), `table.csv` (one row per cell),
`table.json`, `confusion_joint.png` (the joint models' confusion matrices summed over seeds)
and `per_class_recall.png`; DIR is `W/table/<protocol>-<head>/` (`fixed-lstm`, `cv5-lstm`,
`groups-mlp`: one folder per protocol and head) unless `--out` says otherwise, and
`classify.report --table DIR` renders it. With `--dataset dmver|iemocap|music-video` the
published numbers stand beside ours (only when the manifest's class names are that dataset's;
otherwise one warning line replaces them). A modality without a cache gives "n/a" cells with a note;
exit 2 only when no cell at all could be computed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from classify import figures, protocol, render
from classify.cells import build_table
from classify.data import Labels
from classify.fuse import RULES
from classify.heads import HEADS
from classify.joint import JOINT_RULES
from classify.metrics import METRICS
from classify.published import DATASETS
from classify.rows import SEED_ROWS, extra_rows, modalities_of, select_extra_rows
from classify.runs import DEFAULT_MANIFEST, DEFAULT_WORK
from extract import cli, durable
from extract.layout import as_work
from features import cache
from features import modalities as registry


def write_outputs(table: dict, out) -> tuple[str, list[Path]]:
    """Write table.md/.csv/.json and the figures into `out`, each atomically; returns (markdown,
    written paths). A figure the table has nothing for is removed, never left from an earlier table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = render.markdown(table)
    written = []
    for name, data in (("table.md", md.encode("utf-8")), ("table.csv", render.csv_text(table).encode("utf-8")),
                       ("table.json", (json.dumps(table, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))):
        written.append(durable.atomic_write_bytes(out / name, data))
    for name, draw in figures.FIGURES:
        fig = draw(table)
        if fig is None:
            (out / name).unlink(missing_ok=True)
            continue
        written.append(durable.atomic_write_bytes(out / name, figures.png_bytes(fig)))
    return md, written


def parse_joint(value: str) -> tuple[str, ...]:
    """`--joint early,tfn` -> ("early", "tfn"); "none" or "" -> ()."""
    if value.strip().lower() in ("", "none"):
        return ()
    rules = tuple(dict.fromkeys(r.strip() for r in value.split(",") if r.strip()))
    unknown = [r for r in rules if r not in JOINT_RULES]
    if unknown:
        raise ValueError(f"--joint {unknown[0]!r}: choose among {', '.join(JOINT_RULES)} (comma-separated), or none")
    return rules


def parser(entries):
    """The command's arguments; `entries` (the registry's modalities) name the extra rows."""
    p = cli.parser("python -m classify.table", __doc__.split("\n\n")[0])
    p.add_argument("--manifest", default=DEFAULT_MANIFEST)
    p.add_argument("--work", default=DEFAULT_WORK)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..SEEDS-1 per cell")
    p.add_argument("--dataset", default="other", choices=DATASETS, help="which published numbers to show")
    p.add_argument("--head", default="lstm", choices=HEADS)
    p.add_argument("--rule", default="weighted", choices=RULES)
    p.add_argument("--out", default=None, help="output folder (default WORK/table/<protocol>-<head>, e.g. "
                                               "WORK/table/fixed-lstm or WORK/table/cv5-mlp)")
    p.add_argument("--cv", default="fixed", help="fixed (the manifest's split, as published; default), K "
                                                 "(group-aware K-fold over all labelled videos) or groups "
                                                 "(leave-one-group-out); see classify.protocol")
    p.add_argument("--jobs", type=int, default=0,
                   help="single runs trained at a time in worker processes (default 0: one per core)")
    p.add_argument("--metric", default="accuracy", choices=METRICS,
                   help="headline metric of the Markdown (table.json keeps all three)")
    p.add_argument("--joint", default=",".join(JOINT_RULES),
                   help="joint heads shown as rows \"All modalities, <rule>\" over the in_all modalities with a "
                        f"cache: comma-separated rules of {', '.join(JOINT_RULES)} (default: all three), or none")
    p.add_argument("--extra-rows", default="auto",
                   help="rows beyond the seed's table: auto (those whose caches exist), none, or names: "
                        + ", ".join(r.name for r in extra_rows(entries)))
    return p


def _main(args, entries) -> int:
    extra = select_extra_rows(args.work, args.extra_rows, entries, parse_joint(args.joint))
    banner = cache.random_weights_banner(args.work, modalities_of(SEED_ROWS + extra))
    if banner:
        print(banner + "\n", flush=True)
    labels = Labels.from_manifest(args.manifest)
    table = build_table(args.work, labels, list(range(args.seeds)), args.head, args.rule, args.dataset, extra,
                        cv=args.cv, metric=args.metric, jobs=args.jobs, manifest=args.manifest)
    if not any(c["status"] == "ok" for c in table["cells"]):
        reasons = sorted({c["note"] for c in table["cells"] if c["note"]})
        print("error: no cell of the table could be computed:\n  " + "\n  ".join(reasons), file=sys.stderr)
        return cli.EXIT_RUN_FAILED
    out = args.out or as_work(args.work).table(as_work(args.work).table_name(protocol.parse_cv(args.cv), args.head))
    md, written = write_outputs(table, out)
    body = md[len(banner) + 2:] if banner and md.startswith(banner) else md
    print(body)
    print("wrote " + ", ".join(str(p) for p in written))
    return cli.EXIT_OK


def main(argv=None) -> int:
    entries = registry.all_modalities()
    p = parser(entries)
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    return cli.run(lambda: _main(args, entries), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
