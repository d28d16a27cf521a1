"""`python -m benchmarks.classify` at smoke-test size: it trains and fuses the whole table and reports."""
import json

import pytest

from benchmarks import classify as bench

pytestmark = pytest.mark.slow  # each test runs the benchmark end to end


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench.main(["--videos", "45", "--seeds", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "target < 600 s" in text and "rgb+flow+audio" in text
    result = json.loads((out / "bench_classify.json").read_text())
    assert result["videos"] == 45 and result["seeds"] == 1
    rows = {r["modality"]: r for r in result["modalities"]}
    assert set(rows) == {"rgb2d", "rgb", "flow", "audio"}
    assert rows["rgb2d"]["shape"] == [45, 79, 512] and rows["rgb"]["shape"] == [45, 10, 1024]
    assert rows["audio"]["shape"][2] == 128 and 13 <= rows["audio"]["shape"][1] <= 17
    for r in rows.values():
        assert len(r["seeds"]) == 1 and r["seeds"][0]["fit_seconds"] > 0 and r["load_seconds"] >= 0
        assert 0 <= r["seeds"][0]["test_accuracy"] <= 1
    assert [f["modalities"] for f in result["fusions"]] == [["rgb", "flow"], ["rgb", "flow", "audio"]]
    assert all(len(f["seeds"]) == 1 for f in result["fusions"])
    assert result["fit_seconds"] == sum(s["fit_seconds"] for r in rows.values() for s in r["seeds"])
    assert 0 < result["table_seconds"] <= result["total_seconds"]
    # each joint rule timed on rgb+flow+audio+text beside the late weighted rule of the same run
    joint = result["joint"]
    assert joint["late"]["modalities"] == ["rgb", "flow", "audio", "text"] and joint["late"]["seconds"] > 0
    assert set(joint["late"]["single_train_seconds"]) == {"rgb", "flow", "audio", "text"}
    assert [e["rule"] for e in joint["rules"]] == ["early", "tfn", "xattn"]
    for e in joint["rules"]:
        assert len(e["runs"]) == 1 and e["runs"][0]["fit_seconds"] > 0 and e["seconds"] >= e["load_seconds"] >= 0
        assert e["ratio_to_late"] == pytest.approx(e["seconds"] / joint["late"]["seconds"])
        assert e["target_seconds"] == 1800 and e["params"]["weight_decay"] > 0
        assert f"joint {e['rule']} rgb+flow+audio+text" in text
    # the synthetic cache and the runs are deleted unless --keep
    assert sorted(p.name for p in out.iterdir()) == ["bench_classify.json"]


def test_bench_keep_leaves_the_cache_and_runs(tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench.main(["--videos", "30", "--seeds", "1", "--out", str(out), "--keep"]) == 0
    assert (out / "features" / "rgb2d.h5").is_file() and (out / "manifest.csv").is_file()
    assert (out / "runs" / "fuse-rgb+flow+audio-weighted" / "metrics.json").is_file()
    assert (out / "runs" / "audio-lstm-seed0" / "model.joblib").is_file()


def test_bench_cross_validated(tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench.main(["--videos", "90", "--seeds", "1", "--cv", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "x 3 folds (3-fold group-aware cross-validation)" in text and "target < 1800 s" in text
    result = json.loads((out / "bench_classify.json").read_text())
    assert result["protocol"] == {"cv": 3, "folds": 3} and result["target_seconds"] == 1800
    for r in result["modalities"]:
        assert [s["fold"] for s in r["seeds"]] == ["cv3f0", "cv3f1", "cv3f2"]
    assert all(len(f["seeds"]) == 3 for f in result["fusions"])
    joint = next(c for c in result["cells"] if c["row"] == "I3D" and c["column"] == "Joint")
    assert joint["n_test"] == 90 and joint["ci95"][0] <= joint["accuracy"]["mean"] <= joint["ci95"][1]
    assert 0 < joint["p_joint_vs_best_single"] <= 1
    assert 0 <= result["folds_seconds"] and 0 < result["assembly_seconds"] < result["table_seconds"]
