"""`python -m classify.table` on a small synthetic cache (150 videos, a learnable class signal).

The runs are trained once per module (2 seeds); later calls reuse them, as a user's second
`make table` does.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cache import synthetic_cache, write_synthetic_manifest
from classify import published, table as tbl
from features import cache

N = 150  # 30 test videos
SEEDS = 2
BANNER_START = "WARNING: RANDOM BACKBONE WEIGHTS"


def run_main(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = tbl.main(args)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """All four modalities, random weights recorded (what `WEIGHTS=random` gives)."""
    work = tmp_path_factory.mktemp("table") / "work"
    synthetic_cache(work, N, signal=True)
    manifest = write_synthetic_manifest(work.parent / "manifest.csv", N)
    out = work / "table-dmver"
    rc, stdout, stderr = run_main(["--manifest", str(manifest), "--work", str(work), "--seeds", str(SEEDS),
                                   "--dataset", "dmver", "--out", str(out)])
    assert rc == 0, stderr
    return {"work": work, "manifest": manifest, "out": out, "stdout": stdout,
            "json": json.loads((out / "table.json").read_text(encoding="utf-8"))}


def cell(table: dict, row: str, column: str) -> dict:
    return next(c for c in table["cells"] if c["row"] == row and c["column"] == column)


def test_outputs_exist_and_parse(full):
    from matplotlib.image import imread

    out = full["out"]
    md = (out / "table.md").read_text(encoding="utf-8")
    assert "| ConvNet+LSTM |" in md and "| I3D |" in md and "| Audio+I3D |" in md
    assert md in full["stdout"]  # the same table is printed
    with open(out / "table.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # 1 + 3 + 3 defined cells and one per joint head (`--joint` default), all computed
    assert [(r["method"], r["column"]) for r in rows] == [
        ("ConvNet+LSTM", "RGB"), ("I3D", "RGB"), ("I3D", "Flow/Audio"), ("I3D", "Joint"),
        ("Audio+I3D", "RGB"), ("Audio+I3D", "Flow/Audio"), ("Audio+I3D", "Joint"),
        ("All modalities, early", "Joint"), ("All modalities, tfn", "Joint"), ("All modalities, xattn", "Joint")]
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        c = cell(full["json"], r["method"], r["column"])
        per_seed = [float(v) for v in r["accuracy_per_seed_pct"].split(";")]
        assert len(per_seed) == SEEDS
        assert float(r["accuracy_mean_pct"]) == pytest.approx(100 * c["accuracy"]["mean"], abs=1e-3)
        assert float(r["accuracy_mean_pct"]) == pytest.approx(np.mean(per_seed), abs=1e-3)
        assert float(r["macro_f1_mean_pct"]) == pytest.approx(100 * c["macro_f1"]["mean"], abs=1e-3)
    for name in ("confusion_joint.png", "per_class_recall.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.05  # something is drawn, not a blank canvas


def test_cells_are_the_mean_of_the_runs(full):
    """Every cell's mean and std come from the per-seed runs' own metrics.json."""
    table = full["json"]
    assert table["seeds"] == list(range(SEEDS))
    for c in table["cells"]:
        assert len(c["runs"]) == SEEDS
        accs, f1s = [], []
        for seed, path in enumerate(c["runs"]):
            metrics = json.loads((Path(path) / "metrics.json").read_text(encoding="utf-8"))
            if c["kind"] == "joint":
                assert Path(path).name.startswith("fuse-" + "+".join(c["modalities"]))
                assert metrics["seed"] == seed
                metrics = metrics["joint"]
            else:
                assert Path(path).name == f"{c['modalities'][0]}-lstm-seed{seed}"
            accs.append(metrics["accuracy"])
            f1s.append(metrics["macro_f1"])
        assert c["accuracy"]["mean"] == pytest.approx(np.mean(accs), abs=1e-12)
        assert c["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1), abs=1e-12)
        assert c["accuracy"]["per_seed"] == pytest.approx(accs, abs=1e-12)
        assert c["macro_f1"]["mean"] == pytest.approx(np.mean(f1s), abs=1e-12)
    # confusion matrices summed over seeds: every test video counted once per seed
    assert np.sum(cell(table, "I3D", "Joint")["confusion_matrix_sum"]) == SEEDS * 30


def test_footer_states_the_settings(full):
    md = (full["out"] / "table.md").read_text(encoding="utf-8")
    footer = md.split("Macro-F1")[1]
    assert "0-1 (2 per cell)" in footer
    assert "Head: lstm" in footer and "fusion rule: weighted" in footer
    assert "Test videos: 30" in footer
    assert "in percent" in footer


def test_published_numbers_only_for_known_datasets(full):
    # the DMVER dataset README's table: ConvNet+LSTM 37.91; I3D 54.02 / 59.03 / 61.67; Audio+I3D 54.02 / 46.42 / 62.41
    table = full["json"]
    assert cell(table, "ConvNet+LSTM", "RGB")["published_accuracy_percent"] == 37.91
    assert cell(table, "I3D", "Flow/Audio")["published_accuracy_percent"] == 59.03
    assert cell(table, "Audio+I3D", "Joint")["published_accuracy_percent"] == 62.41
    md = (full["out"] / "table.md").read_text(encoding="utf-8")
    assert "RGB published" in md and "| 61.67 |" in md and published.SOURCE in md and "FACTS" not in md
    assert table["published_source"] == published.SOURCE == "the DMVER dataset README (its results table)"

    run_dir = Path(cell(table, "I3D", "RGB")["runs"][0])
    before = (run_dir / "metrics.json").stat().st_mtime_ns
    out = full["work"] / "table-other"
    # (--joint none: only the seed's rows, whose title would otherwise say "beyond the published table")
    rc, stdout, stderr = run_main(["--manifest", str(full["manifest"]), "--work", str(full["work"]),
                                   "--seeds", str(SEEDS), "--dataset", "other", "--out", str(out), "--joint", "none"])
    assert rc == 0, stderr
    assert (run_dir / "metrics.json").stat().st_mtime_ns == before  # reused, not trained again
    md = (out / "table.md").read_text(encoding="utf-8").split("\n## ", 1)[1]  # after the banner
    assert "| Method | RGB | Flow/Audio | Joint |" in md.split("Macro-F1")[0]  # the accuracy table
    assert "published" not in md and "61.67" not in md
    other = json.loads((out / "table.json").read_text(encoding="utf-8"))
    assert other["published_source"] is None
    assert all("published_accuracy_percent" not in c for c in other["cells"])
    with open(out / "table.csv", newline="", encoding="utf-8") as f:
        assert all(r["published_accuracy_pct"] == "" for r in csv.DictReader(f))
    # the same runs give the same numbers
    assert cell(other, "I3D", "Joint")["accuracy"] == cell(table, "I3D", "Joint")["accuracy"]


def test_random_weights_banner_comes_first(full):
    assert full["stdout"].startswith(BANNER_START)
    assert full["stdout"].count(BANNER_START) == 1
    assert full["stdout"].index(BANNER_START) < full["stdout"].index("| Method |")
    md = (full["out"] / "table.md").read_text(encoding="utf-8")
    assert md.startswith(BANNER_START)
    assert full["json"]["banner"].startswith(BANNER_START)
    assert full["json"]["banner"] == cache.random_weights_banner(full["work"], ["rgb2d", "rgb", "flow", "audio"])


def test_missing_audio_cache_gives_na_cells(full, tmp_path):
    work = tmp_path / "work"
    (work / "features").mkdir(parents=True)
    for m in ("rgb", "flow", "rgb2d"):
        shutil.copy2(cache.cache_path(full["work"], m), cache.cache_path(work, m))
    # the single runs travel too, so they are reused (same cache digests, same manifest)
    shutil.copytree(full["work"] / "runs", work / "runs",
                    ignore=lambda d, names: [n for n in names if n.startswith(("audio-", "fuse-"))])
    rc, stdout, stderr = run_main(["--manifest", str(full["manifest"]), "--work", str(work), "--seeds", str(SEEDS),
                                   "--dataset", "dmver"])
    assert rc == 0, stderr
    out = work / "table" / "fixed-lstm"  # the default output folder
    table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    for column in ("Flow/Audio", "Joint"):
        c = cell(table, "Audio+I3D", column)
        assert c["status"] == "n/a" and "accuracy" not in c
        assert "audio" in c["note"] and "feature cache" in c["note"]
    for row, column in (("ConvNet+LSTM", "RGB"), ("I3D", "RGB"), ("I3D", "Flow/Audio"), ("I3D", "Joint"),
                        ("Audio+I3D", "RGB")):
        c = cell(table, row, column)
        assert c["status"] == "ok"
        assert c["accuracy"] == cell(full["json"], row, column)["accuracy"]
    md = (out / "table.md").read_text(encoding="utf-8")
    audio_row = next(line for line in md.splitlines() if line.startswith("| Audio+I3D |"))
    assert audio_row.count("n/a") == 2
    assert "Not available:" in md and "no audio feature cache" in md
    with open(out / "table.csv", newline="", encoding="utf-8") as f:
        rows = {(r["method"], r["column"]): r for r in csv.DictReader(f)}
    assert rows[("Audio+I3D", "Flow/Audio")]["status"] == "n/a"
    assert rows[("Audio+I3D", "Flow/Audio")]["accuracy_mean_pct"] == ""
    assert rows[("I3D", "Flow/Audio")]["accuracy_mean_pct"] != ""
    # only the I3D joint is left to draw
    assert (out / "confusion_joint.png").is_file() and (out / "per_class_recall.png").is_file()


def test_no_banner_with_pretrained_weights_and_partial_cache(tmp_path):
    """Only rgb cached, with a checkpoint recorded: no banner, rgb cells filled, the rest n/a."""
    work = tmp_path / "work"
    synthetic_cache(work, 60, modalities=("rgb",), signal=True, weights="imagenet")
    manifest = write_synthetic_manifest(tmp_path / "manifest.csv", 60)
    rc, stdout, stderr = run_main(["--manifest", str(manifest), "--work", str(work), "--seeds", "1"])
    assert rc == 0, stderr
    assert "RANDOM" not in stdout and stdout.startswith("## ")
    table = json.loads((work / "table" / "fixed-lstm" / "table.json").read_text(encoding="utf-8"))
    assert table["banner"] is None
    status = {(c["row"], c["column"]): c["status"] for c in table["cells"]}
    assert status[("I3D", "RGB")] == status[("Audio+I3D", "RGB")] == "ok"
    assert [k for k, v in status.items() if v == "ok"] == [("I3D", "RGB"), ("Audio+I3D", "RGB")]
    assert not (work / "table" / "fixed-lstm" / "confusion_joint.png").exists()  # no joint model to draw
    assert (work / "table" / "fixed-lstm" / "per_class_recall.png").is_file()


def test_nothing_computable_exits_2(tmp_path):
    manifest = write_synthetic_manifest(tmp_path / "manifest.csv", 30)
    rc, stdout, stderr = run_main(["--manifest", str(manifest), "--work", str(tmp_path / "empty"), "--seeds", "1"])
    assert rc == 2
    assert "no cell of the table could be computed" in stderr and "make features" in stderr
    assert not (tmp_path / "empty" / "table").exists()
    rc, _, stderr = run_main(["--manifest", str(tmp_path / "nope.csv"), "--work", str(tmp_path), "--seeds", "1"])
    assert rc == 2 and "manifest not found" in stderr


def test_joint_head_rows(full):
    """`--joint` (default early,tfn,xattn): one row per joint head over the in_all modalities with a
    cache, its runs the joint runs of classify.fuse (reused by a second table), tested against the best
    single modality, named in the footer; `--joint tfn` keeps one of them."""
    table = full["json"]
    md = (full["out"] / "table.md").read_text(encoding="utf-8")
    for rule in ("early", "tfn", "xattn"):
        c = cell(table, f"All modalities, {rule}", "Joint")
        assert c["rule"] == rule and c["modalities"] == ["rgb", "flow", "audio"] and c["status"] == "ok"
        assert "weights" not in c and c["best_single"] in c["modalities"] and 0 <= c["p_joint_vs_best_single"] <= 1
        assert [Path(p).name for p in c["runs"]] == [f"fuse-rgb+flow+audio-{rule}", f"fuse-rgb+flow+audio-{rule}-seed1"]
        assert f"| All modalities, {rule} |" in md
    assert "Joint heads (early, tfn, xattn)" in md
    run = Path(cell(table, "All modalities, xattn", "Joint")["runs"][0]) / "metrics.json"
    before = run.stat().st_mtime_ns
    out = full["work"] / "table-tfn"
    rc, _, stderr = run_main(["--manifest", str(full["manifest"]), "--work", str(full["work"]), "--seeds", str(SEEDS),
                              "--out", str(out), "--joint", "tfn"])
    assert rc == 0, stderr
    rows = [c["row"] for c in json.loads((out / "table.json").read_text(encoding="utf-8"))["cells"]]
    assert "All modalities, tfn" in rows and "All modalities, early" not in rows
    assert run.stat().st_mtime_ns == before
    rc, _, stderr = run_main(["--manifest", str(full["manifest"]), "--work", str(full["work"]), "--joint", "lmf"])
    assert rc == 2 and "--joint 'lmf'" in stderr
