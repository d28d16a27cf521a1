"""The table as text: Markdown (what `classify.table` prints and the report shows) and CSV.

Both read only the dict `classify.cells.build_table` returns (or its table.json), so a table
can be rendered again without its runs. The Markdown puts the random-weights banner first, the
headline metric with its 95 % interval (exact binomial for accuracy, bootstrap otherwise), then
the two other metrics; rows beyond the published table follow in tables of their own, and a
footer states the settings and the warnings (small test split, leaking groups).
"""
from __future__ import annotations

import csv
import io

from classify import protocol, stats
from classify.joint import JOINT_RULES
from classify.metrics import METRICS
from classify.published import DATASET_NAMES

METRIC_NAMES = {"accuracy": "Test accuracy", "balanced_accuracy": "Balanced accuracy (mean per-class recall)",
                "macro_f1": "Macro-F1"}


def _pct(summary: dict | None, with_std: bool = True) -> str:
    if not summary:
        return "n/a"
    return f"{100 * summary['mean']:.2f} ± {100 * summary['std']:.2f}" if with_std else f"{100 * summary['mean']:.2f}"


def _cell_text(cell: dict, metric: str, with_ci: bool) -> str:
    """`61.70 ± 1.20 [58.90, 64.30]`, and ` (n.s.)` for a joint cell not significantly better than
    its best single modality."""
    text = _pct(cell.get(metric))
    if with_ci and cell.get("ci95_by_metric"):
        lo, hi = cell["ci95_by_metric"][metric]
        text += f" [{100 * lo:.1f}, {100 * hi:.1f}]"  # one decimal: the interval is not known better
    p = (cell.get("p_by_metric") or {}).get(metric)
    if with_ci and p is not None and p >= stats.ALPHA:
        text += " (n.s.)"
    return text


def _interval_name(metric: str) -> str:
    if metric == "accuracy":
        return f"{stats.ACCURACY_INTERVAL} interval over test videos"
    return "bootstrap interval over test videos"


def find_cell(table: dict, row: str, column: str) -> dict | None:
    return next((c for c in table["cells"] if c["row"] == row and c["column"] == column), None)


def _seed_text(seeds: list[int]) -> str:
    if seeds == list(range(len(seeds))) and len(seeds) > 1:
        return f"0-{len(seeds) - 1} ({len(seeds)} per cell)"
    return f"{', '.join(map(str, seeds))} ({len(seeds)} per cell)"


def _grid(table: dict, rows: list[dict], metric: str, published: bool, notes: list[str], with_ci: bool = False) -> list[str]:
    """One Markdown table of `rows` (from table["rows"]) over the columns they declare."""
    columns = list(dict.fromkeys(c for r in rows for c in r["cells"]))
    header = ["Method"]
    for col in columns:
        header += [col, f"{col} published"] if published else [col]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        out = [row["name"]]
        for col in columns:
            cell = find_cell(table, row["name"], col)
            text = "-" if cell is None else _cell_text(cell, metric, with_ci)
            if cell is not None and cell["status"] != "ok":
                note = f"{row['name']} {col} ({'+'.join(cell['modalities'])}): {cell['note']}"
                if note not in notes:
                    notes.append(note)
                text = f"n/a [{notes.index(note) + 1}]"
            out.append(text)
            if published:
                value = None if cell is None else cell.get("published_accuracy_percent")
                out.append("-" if value is None else f"{value:.2f}")
        lines.append("| " + " | ".join(out) + " |")
    return lines


def _protocol_lines(table: dict, fewer: str) -> list[str]:
    cv, n = table["protocol"]["cv"], table["protocol"]["folds"]
    if cv == protocol.FIXED:
        return [f"- Test videos: {table['n_test']} (manifest test split){fewer}."]
    how = (f"leave-one-group-out, one fold per group ({', '.join(table['held_out_groups'])})" if cv == protocol.GROUPS
           else f"{cv}-fold cross-validation, stratified by class and group-aware")
    return [f"- Protocol: {how}, over all {table['n_test']} labelled videos (the manifest's splits are not used); "
            f"no group is in two parts of a fold, and the validation part is whole groups carved out of each fold's "
            f"training part. Every video is tested once per seed; runs `W/runs/*-{table['folds'][0]}` .. "
            f"`*-{table['folds'][-1]}`.",
            f"- Test videos: {table['n_test']} over the {n} folds{fewer}."]


def _joint_rule_lines(table: dict) -> list[str]:
    """The footer line of the joint heads' rows ("All modalities, early" ...), when there are some."""
    rules = list(dict.fromkeys(c["rule"] for c in table["cells"] if c.get("rule") in JOINT_RULES))
    if not rules:
        return []
    return [f"- Joint heads ({', '.join(rules)}): one classifier trained on all the row's modalities together "
            "(early: pooled features concatenated into an MLP; tfn: tensor fusion; xattn: cross-modal attention; "
            "classify.joint), on the train split, early-stopped on the validation split; a video lacking a "
            "modality is classified from the others (learned absent vectors, modality dropout)."]


def markdown(table: dict) -> str:
    """The table as Markdown, the random-weights banner (if any) first; rows beyond the seed's
    table follow in a table of their own, marked as not published. The headline metric (with
    its 95 % interval) first, then the two others (mean ± std)."""
    published = table["published_source"] is not None
    name = table.get("dataset_name") or DATASET_NAMES[table["dataset"]]
    seed_rows = [r for r in table["rows"] if r["in_published_table"]]
    extra_rows = [r for r in table["rows"] if not r["in_published_table"]]
    n_seeds = len(table["seeds"])
    prot = table.get("protocol", {"cv": protocol.FIXED, "folds": 1})
    fixed = prot["cv"] == protocol.FIXED
    over = f"{n_seeds} seed{'s' if n_seeds > 1 else ''}" if fixed else f"{prot['folds']} folds × {n_seeds} seed{'s' if n_seeds > 1 else ''}"
    metric = table.get("metric", "accuracy")
    lines = []
    if table["banner"]:
        lines += [table["banner"], ""]
    if table.get("published_warning"):
        lines += [f"**Warning**: {table['published_warning']}.", ""]
    lines += [f"## Emotion recognition results on {name} ({protocol.title(prot['cv'], prot['folds'])})", "",
              f"{METRIC_NAMES[metric]} (%), mean ± std over {over} [95 % {_interval_name(metric)}]"
              + (f"; \"published\" = {table['published_source']}." if published and metric == "accuracy" else "."), ""]
    notes: list[str] = []
    lines += _grid(table, seed_rows, metric, published and metric == "accuracy", notes, with_ci=True)
    if extra_rows:
        lines += ["", f"Beyond the published table (these rows are not in the seed's results), {METRIC_NAMES[metric].lower()} (%):", ""]
        lines += _grid(table, extra_rows, metric, False, notes, with_ci=True)
    for other in (m for m in METRICS if m != metric):
        lines += ["", f"{METRIC_NAMES[other]} (%), mean ± std over the same runs"
                  + (f"; \"published\" = {table['published_source']}:" if published and other == "accuracy" else ":"), ""]
        lines += _grid(table, seed_rows, other, published and other == "accuracy", notes)
        if extra_rows:
            lines += [""] + _grid(table, extra_rows, other, False, notes)
    lines.append("")
    if notes:
        lines += ["Not available:"] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)] + [""]
    n_runs = table["n_test"]
    counts = sorted({(c["n_test"], "+".join(c["modalities"])) for c in table["cells"] if c["status"] == "ok"
                     and c["n_test"] != n_runs}, key=lambda t: t[1])
    fewer = "".join(f"; {m} cells score {n} (videos without {m} are left out)" for n, m in counts)
    weights = []
    for c in table["cells"]:
        if c["kind"] == "joint" and c["status"] == "ok" and c.get("weights"):
            weights.append(f"{c['row']} " + ", ".join(f"{m} {w:.2f}" for m, w in c["weights"].items()))
    fixed_heads = "".join(f" (the {r} row always uses {h})" for r, h in table["fixed_heads"].items())
    joints = [c for c in table["cells"] if c["kind"] == "joint" and c.get("p_by_metric")]
    if table.get("small_test_warning"):
        lines.append(f"- **Warning**: {table['small_test_warning']}.")
    if table.get("leaking_groups"):
        lines.append(f"- **Warning**: the manifest's splits put {table['leaking_groups']}; a classifier may "
                     f"recognise them instead of the emotion (`python -m extract.manifest check`; `--cv K` keeps "
                     f"groups whole).")
    lines += [
        f"- Seeds: {_seed_text(table['seeds'])}; std is the sample standard deviation over "
        f"{'seeds' if fixed else 'folds × seeds'} (ddof=1).",
        f"- Head: {table['head']} on frozen backbone features{fixed_heads}; fusion rule: {table['rule']} (late fusion of "
        f"the single runs' class probabilities, chosen on the validation split)"
        + (f"; mean weights: {'; '.join(weights)}." if weights else "."),
        *_joint_rule_lines(table),
        *_protocol_lines(table, fewer),
        (f"- [low, high]: 95 % {stats.ACCURACY_INTERVAL} interval of the accuracy: the test videos right (mean "
         f"over {'the seeds' if fixed else 'the seeds, each pooling all folds'}) out of those scored; valid at any "
         f"number of test videos." if metric == "accuracy" else
         f"- [low, high]: 95 % bootstrap interval of the {METRIC_NAMES[metric].lower()} over the test videos "
         f"({stats.N_BOOT} resamples of the videos, seed {stats.SEED}; on each resample the mean over "
         f"{'the seeds' if fixed else 'the seeds, each pooling all folds'})."),
    ]
    if joints:
        ns = [f"{c['row']} (p = {c['p_by_metric'][metric]:.3f} against {c['best_single_by_metric'][metric]['modality']})"
              for c in joints]
        lines.append(f"- (n.s.): the joint model is not significantly better than the best single modality it fuses "
                     f"(one-sided paired bootstrap over the videos both scored, p ≥ {stats.ALPHA}); {'; '.join(ns)}. "
                     f"Exact McNemar tests per seed are in table.json.")
    lines += [f"- Columns: {table['columns']}.",
              "- Accuracies, balanced accuracies and macro-F1 in percent."]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("method", "column", "modalities", "in_published_table", "head", "rule", "status", "note", "n_test", "seeds",
              "protocol", "folds", "accuracy_mean_pct", "accuracy_std_pct", "accuracy_per_seed_pct",
              "accuracy_ci95_low_pct", "accuracy_ci95_high_pct", "balanced_accuracy_mean_pct",
              "balanced_accuracy_std_pct", "balanced_accuracy_per_seed_pct", "macro_f1_mean_pct", "macro_f1_std_pct",
              "macro_f1_per_seed_pct", "best_single", "p_joint_vs_best_single", "published_accuracy_pct")


def csv_text(table: dict) -> str:
    """One row per cell; per-run values joined by ';' (percent, two decimals kept as floats): per
    seed for the fixed split, per fold and seed (fold-major) in cross-validation."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    prot = table.get("protocol", {"cv": protocol.FIXED, "folds": 1})
    for c in table["cells"]:
        row = {"method": c["row"], "column": c["column"], "modalities": "+".join(c["modalities"]),
               "in_published_table": c["in_published_table"], "head": c["head"],
               "rule": c.get("rule", ""), "status": c["status"], "note": c["note"] or "",
               "n_test": c.get("n_test", ""), "seeds": ";".join(map(str, table["seeds"])),
               "protocol": prot["cv"], "folds": prot["folds"],
               "best_single": c.get("best_single", ""),
               "p_joint_vs_best_single": "" if c.get("p_joint_vs_best_single") is None else c["p_joint_vs_best_single"],
               "published_accuracy_pct": "" if c.get("published_accuracy_percent") is None
               else c["published_accuracy_percent"]}
        for key in METRICS:
            s = c.get(key)
            row[f"{key}_mean_pct"] = "" if s is None else round(100 * s["mean"], 4)
            row[f"{key}_std_pct"] = "" if s is None else round(100 * s["std"], 4)
            values = None if s is None else s.get("per_seed", s.get("per_run"))
            row[f"{key}_per_seed_pct"] = "" if s is None else ";".join(f"{100 * v:.4f}" for v in values)
        ci = c.get("ci95")
        row["accuracy_ci95_low_pct"] = "" if ci is None else round(100 * ci[0], 4)
        row["accuracy_ci95_high_pct"] = "" if ci is None else round(100 * ci[1], 4)
        writer.writerow(row)
    return buf.getvalue()
