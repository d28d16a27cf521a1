"""Evaluation protocols: group-aware folds, leave-one-group-out, cross-validated runs and tables,
and the leakage that groups exist to prevent."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks import leakage
from benchmarks.cache import synthetic_cache, write_synthetic_manifest
from classify import cells, fuse as fuse_mod, protocol, render, table as tbl, train as train_mod
from classify.data import Labels


def grouped_labels(n_groups=40, seed=0, per_group=(1, 5)) -> Labels:
    rng = np.random.default_rng(seed)
    label, split, group = {}, {}, {}
    for g in range(n_groups):
        for k in range(rng.integers(*per_group, endpoint=True)):
            vid = f"g{g}/v{k}"
            label[vid], split[vid], group[vid] = int(rng.integers(0, 3)), "train", f"g{g}"
    return Labels(["a", "b", "c"], label, split, "d", group)


def assert_fold_structure(folds, labels):
    tested = Counter()
    for fold in folds:
        assert set(fold.split) == set(labels.label) and set(fold.split.values()) == {"train", "val", "test"}
        parts = {}
        for vid, part in fold.split.items():
            parts.setdefault(labels.group.get(vid, vid), set()).add(part)
        assert all(len(p) == 1 for p in parts.values()), "a group in two parts of a fold"
        tested.update(fold.ids("test"))
        n_train, n_val = len(fold.ids("train")), len(fold.ids("val"))
        assert 0.15 < n_val / (n_train + n_val) < 0.4  # about a quarter of the training part
    assert tested == Counter(list(labels.label))  # every video tested exactly once
    assert len({f.digest for f in folds}) == len(folds) and labels.digest not in {f.digest for f in folds}


def test_cv_k_folds_are_stratified_group_aware_and_seeded():
    labels = grouped_labels(60)
    folds = protocol.fold_labels(labels, "3")
    assert [f.tag for f in folds] == ["cv3f0", "cv3f1", "cv3f2"]
    assert_fold_structure(folds, labels)
    overall = np.bincount(list(labels.label.values()), minlength=3) / len(labels.label)
    for f in folds:
        share = np.bincount([f.label[i] for i in f.ids("test")], minlength=3) / len(f.ids("test"))
        assert np.abs(share - overall).max() < 0.12
    again = protocol.fold_labels(labels, 3)
    assert [f.split for f in again] == [f.split for f in folds]
    assert [f.split for f in protocol.fold_labels(labels, 3, seed=1)] != [f.split for f in folds]
    # without groups: every video is its own group (stratified K-fold over videos)
    plain = labels._replace(group=None)
    assert_fold_structure(protocol.fold_labels(plain, 4), plain._replace(group={}))


def test_cv_groups_is_leave_one_group_out():
    labels = grouped_labels(5, per_group=(6, 9))
    folds = protocol.fold_labels(labels, "groups")
    assert [f.tag for f in folds] == [f"cvgroupsf{k}" for k in range(5)]
    assert_fold_structure(folds, labels)
    assert [{labels.group[i] for i in f.ids("test")} for f in folds] == [{f"g{k}"} for k in range(5)]
    assert all(len({labels.group[i] for i in f.ids("val")}) == 1 for f in folds)  # 4 training groups: 1 for val
    assert cells.held_out_groups(folds) == [f"g{k}" for k in range(5)]


def test_protocol_errors_are_one_actionable_line():
    labels = grouped_labels(40)
    for bad, match in (("1", "at least 2 folds"), ("five", "give a number of folds")):
        with pytest.raises(ValueError, match=match):
            protocol.parse_cv(bad)
    assert protocol.parse_cv(None) == protocol.parse_cv("") == protocol.parse_cv("fixed") == "fixed"
    with pytest.raises(ValueError, match="40 groups here, it needs 3 to 30; use --cv K"):
        protocol.fold_labels(labels, "groups")
    with pytest.raises(ValueError, match="needs a group for every video"):
        protocol.fold_labels(labels._replace(group={}), "groups")
    with pytest.raises(ValueError, match="only 2 groups"):
        protocol.fold_labels(grouped_labels(2), 3)
    assert protocol.fold_labels(labels, "fixed") == [labels]


# ----------------------------------------------------------------------------- runs and tables

N = 150


@pytest.fixture(scope="module")
def grouped_work(tmp_path_factory):
    """rgb and flow caches of 150 synthetic videos; the manifest has DMVER-like publishers."""
    work = tmp_path_factory.mktemp("cv") / "work"
    synthetic_cache(work, N, ("rgb", "flow"), signal=True)
    manifest = write_synthetic_manifest(work.parent / "manifest.csv", N, groups=True)
    return work, manifest


def test_train_and_fuse_cli_run_every_fold_and_reuse_it(grouped_work, capsys):
    work, manifest = grouped_work
    args = ["--work", str(work), "--manifest", str(manifest), "--cv", "3"]
    assert train_mod.main(["--modality", "rgb"] + args) == 0
    out = capsys.readouterr().out
    assert "test accuracy over 3 folds (3-fold group-aware cross-validation)" in out
    paths = [work / "runs" / f"rgb-lstm-seed0-cv3f{k}" for k in range(3)]
    assert all((p / "predictions.npz").is_file() for p in paths)
    settings = [json.loads((p / "settings.json").read_text()) for p in paths]
    assert [s["fold"] for s in settings] == ["cv3f0", "cv3f1", "cv3f2"]
    test_ids = [json.loads((p / "metrics.json").read_text())["n"] for p in paths]
    assert sum(test_ids) == N  # every video tested once
    stamps = [(p / "model.joblib").stat().st_mtime_ns for p in paths]
    assert train_mod.main(["--modality", "rgb"] + args) == 0
    assert "(reused)" in capsys.readouterr().out
    assert fuse_mod.main(["--modalities", "rgb,flow"] + args) == 0
    assert [(p / "model.joblib").stat().st_mtime_ns for p in paths] == stamps  # fusion reused the rgb runs
    assert all((work / "runs" / f"fuse-rgb+flow-weighted-cv3f{k}" / "metrics.json").is_file() for k in range(3))
    assert "joint test accuracy over 3 folds" in capsys.readouterr().out
    assert train_mod.main(["--modality", "rgb", "--cv", "x"] + args[:4]) == 2
    assert capsys.readouterr().err.startswith("error: ValueError: --cv 'x'")


def test_cross_validated_table(grouped_work, tmp_path):
    work, manifest = grouped_work
    out = tmp_path / "table"
    args = ["--manifest", str(manifest), "--work", str(work), "--seeds", "2", "--cv", "3", "--out", str(out)]
    rc, stdout, stderr = _table(args)
    assert rc == 0, stderr
    table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    assert table["protocol"] == {"cv": 3, "folds": 3} and table["folds"] == ["cv3f0", "cv3f1", "cv3f2"]
    assert table["n_test"] == N
    i3d = {c["column"]: c for c in table["cells"] if c["row"] == "I3D"}
    for c in i3d.values():
        assert c["status"] == "ok" and c["n_test"] == N and len(c["accuracy"]["per_run"]) == 6
        assert [Path(p).name[-5:] for p in c["runs"]] == ["cv3f0", "cv3f0", "cv3f1", "cv3f1", "cv3f2", "cv3f2"]
        accs = [json.loads((Path(p) / "metrics.json").read_text()) for p in c["runs"]]
        accs = [m["joint"]["accuracy"] if "joint" in m else m["accuracy"] for m in accs]
        assert c["accuracy"]["mean"] == pytest.approx(np.mean(accs)) and c["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
        lo, hi = c["ci95"]
        assert lo < c["accuracy"]["mean"] < hi and set(c["ci95_by_metric"]) == {"accuracy", "balanced_accuracy", "macro_f1"}
    joint = i3d["Joint"]
    assert joint["best_single"] in ("rgb", "flow") and 0 < joint["p_joint_vs_best_single"] <= 1
    assert len(joint["mcnemar_vs_best_single"]) == 2
    md = (out / "table.md").read_text(encoding="utf-8")
    assert "(3-fold group-aware cross-validation)" in md and "over 3 folds × 2 seeds" in md
    assert "Test videos: 150 over the 3 folds" in md
    row = next(line for line in md.splitlines() if line.startswith("| I3D |"))
    assert row.count("[") == 3 and row.count("±") == 3
    assert ("(n.s.)" in row) == (joint["p_joint_vs_best_single"] >= 0.05)
    # a second table reuses every fold's runs
    stamp = (Path(i3d["RGB"]["runs"][0]) / "model.joblib").stat().st_mtime_ns
    rc, _, stderr = _table(args[:-1] + [str(tmp_path / "again"), "--metric", "macro_f1"])
    assert rc == 0, stderr
    assert (Path(i3d["RGB"]["runs"][0]) / "model.joblib").stat().st_mtime_ns == stamp
    again = json.loads((tmp_path / "again" / "table.json").read_text(encoding="utf-8"))
    assert again["metric"] == "macro_f1" and render.find_cell(again, "I3D", "RGB")["accuracy"] == i3d["RGB"]["accuracy"]
    assert (tmp_path / "again" / "table.md").read_text(encoding="utf-8").split("\n\n")[2].startswith("Macro-F1 (%)")


def _table(args):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = tbl.main(args)
    return rc, out.getvalue(), err.getvalue()


# ----------------------------------------------------------------------------- leakage


def test_groups_stop_a_head_from_scoring_by_recognising_the_group(tmp_path):
    """Each group has its own look and one label; nothing else separates the classes."""
    results = leakage.demonstrate(tmp_path, groups=60, per_group=5)
    assert results["random split"] > 0.9 and results["5-fold, groups ignored"] > 0.9
    assert results["group-aware split"] < 0.55 and results["5-fold, group-aware"] < 0.5


def test_a_fixed_split_table_warns_when_the_manifest_leaks_groups(tmp_path):
    from extract.manifest import describe_leaks, leaking_groups, read_manifest

    work = tmp_path / "work"
    synthetic_cache(work, 60, ("rgb",), signal=True)
    # 57 publishers for 60 videos: the last three share a publisher with the first three, and the
    # synthetic round-robin split puts them in other splits
    manifest = write_synthetic_manifest(tmp_path / "m.csv", 60, groups=True)
    leaks = protocol.leaking_groups(Labels.from_manifest(manifest))
    assert leaks == leaking_groups(read_manifest(manifest)) and len(leaks) == 3
    rc, stdout, stderr = _table(["--manifest", str(manifest), "--work", str(work), "--seeds", "1"])
    assert rc == 0, stderr
    table = json.loads((work / "table" / "fixed-lstm" / "table.json").read_text(encoding="utf-8"))
    assert table["leaking_groups"] == describe_leaks(leaks)
    assert f"**Warning**: the manifest's splits put {describe_leaks(leaks)}" in stdout
    # cross-validation ignores the manifest's splits: nothing to warn about
    rc, stdout, stderr = _table(["--manifest", str(manifest), "--work", str(work), "--seeds", "1", "--cv", "3"])
    assert rc == 0, stderr
    assert "Warning" not in stdout and "leaking_groups" not in stderr
    assert json.loads((work / "table" / "cv3-lstm" / "table.json").read_text(encoding="utf-8"))["leaking_groups"] is None


def test_runs_trained_in_parallel_are_the_sequential_runs(tmp_path):
    from classify.train import train_runs

    works = []
    for name in ("seq", "par"):
        work = tmp_path / name
        synthetic_cache(work, 90, ("rgb",), signal=True)
        works.append(work)
    labels = Labels.from_manifest(write_synthetic_manifest(tmp_path / "m.csv", 90, groups=True))
    folds = protocol.fold_labels(labels, 2)
    seq = train_runs(works[0], folds, "rgb", "lstm", [0, 1], jobs=1)
    par = train_runs(works[1], folds, "rgb", "lstm", [0, 1], jobs=2)
    for a, b in zip(sum(seq, []), sum(par, [])):
        assert not a.reused and not b.reused and a.path.name == b.path.name
        np.testing.assert_array_equal(a.test_proba, b.test_proba)
        np.testing.assert_array_equal(a.val_proba, b.val_proba)
        assert a.test_ids == b.test_ids and a.metrics["epochs"] == b.metrics["epochs"]
    again = train_runs(works[1], folds, "rgb", "lstm", [0, 1], jobs=2)
    assert all(r.reused for r in sum(again, []))
    assert [p.name for p in sorted((works[1] / "runs").iterdir())] == [
        f"rgb-lstm-seed{s}-cv2f{f}" for s in (0, 1) for f in (0, 1)]
