"""The extraction benchmark (benchmarks.stages): its quick run end to end (marked slow), and its parts.

The quick run is run once per module (about 30-40 s on a loaded 2-core machine) through the
command line, as `make bench` runs it; the tests then read what it reported and wrote.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import stages as bench
from extract import flow, frames
from extract.manifest import Video
from tests.cli import run_cli


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run = run_cli("benchmarks.stages", "--quick", "--out", out, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run.stdout, json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_report_has_every_figure_and_the_machine(quick):
    out, stdout, report = quick
    for key in ("date", "command", "machine", "settings", "inputs", "ours", "published", "ratios", "decode",
                "solver_fraction", "torch_vs_opencv", "checks", "wall_seconds"):
        assert key in report, key
    m = report["machine"]
    assert m["cpu_count"] >= 1 and m["platform"] and len(m["loadavg_start"]) == 3 and len(m["loadavg_end"]) == 3
    assert report["quick"] is True and report["settings"]["num_frames"] == 16 and report["settings"]["size"] == 112
    # one sample video plus the portrait clip, really 1080x1920 with audio
    assert len(report["inputs"]) == 2
    portrait = report["inputs"][-1]
    assert (portrait["width"], portrait["height"], portrait["audio"]) == (1080, 1920, True)
    assert portrait["seconds"] == pytest.approx(3.0, abs=0.1)
    for stage in ("frames", "flow", "audio"):
        s = report["ours"][stage]
        assert s["done"] == 2 and s["failed"] == 0 and s["s_per_video"] > 0 and s["mb_per_video"] > 0
    assert {c["name"] for c in report["checks"]} == set(bench.TARGETS)
    # the table is printed and written
    md = (out / "report.md").read_text()
    for text in (stdout, md):
        assert "| check | target | measured | result |" in text and "speed: published s / ours s" in text
    assert "load average" in md and report["date"][:10] in md


@pytest.mark.slow
def test_ratios_are_positive_and_follow_from_the_times(quick):
    _, _, report = quick
    ours, pub = report["ours"], report["published"]
    assert ours["s_per_video"] == pytest.approx(ours["frames"]["s_per_video"] + ours["flow"]["s_per_video"])
    assert ours["mb_per_video"] == pytest.approx(ours["frames"]["mb_per_video"] + ours["flow"]["mb_per_video"])
    assert report["ratios"]["speed"] > 0 and report["ratios"]["disk"] > 0
    assert report["ratios"]["speed"] == pytest.approx(pub["s_per_video"] / ours["s_per_video"])
    assert report["ratios"]["disk"] == pytest.approx(pub["mb_per_video"] / ours["mb_per_video"])
    # the published seconds are the sum of its videos' seconds (sequential), up to loop overhead
    assert pub["seconds"] >= sum(v["seconds"] for v in pub["per_video"])
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["speed_ratio"]["measured"] == report["ratios"]["speed"]
    assert checks["speed_ratio"]["pass"] == (report["ratios"]["speed"] >= 1.3)
    assert checks["decode_seconds"]["measured"] == min(report["decode"]["runs"])
    assert report["decode"]["picked"] == 16 and report["decode"]["frame_shape"] == [112, 112, 3]
    assert len(report["decode"]["ffmpeg_cpu_seconds"]) == 3 and min(report["decode"]["ffmpeg_cpu_seconds"]) > 0


@pytest.mark.slow
def test_published_outputs_have_the_published_layout(quick):
    out, _, report = quick
    pub = report["published"]
    total = 0
    for v in pub["per_video"]:
        flows = np.load(v["npy"])
        assert flows.dtype == np.int64 and flows.shape == (15, 112, 112, 2)   # T - 1 pairs of picked frames
        assert flows.min() >= 0 and flows.max() <= 255                          # +-15 px scaled to 0..255
        assert np.abs(flows - 127.5).max() > 1                                   # the clips move: not all zero flow
        cap = cv2.VideoCapture(v["mp4"])
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, frame = cap.read()
        cap.release()
        assert ok and frame.shape == (112, 112, 3) and n == v["source_frames"]   # every frame, squashed
        assert len(v["picks"]) == 16 and v["picks"] == sorted(v["picks"])
        total += Path(v["mp4"]).stat().st_size + Path(v["npy"]).stat().st_size
    assert pub["mb_per_video"] == pytest.approx(total / 1e6 / len(pub["per_video"]))


@pytest.mark.slow
def test_our_outputs_and_solver_share(quick):
    out, _, report = quick
    work = out / "quick" / "ours"
    flow_mb = 0
    for v in report["inputs"]:
        assert frames.load(work, v["id"]).shape == (16, 112, 112, 3)
        assert flow.load(work, v["id"]).shape == (16, 112, 112, 2)
    for p in (work / "flow").glob("*.npz"):
        flow_mb += p.stat().st_size / 1e6
    assert report["ours"]["flow"]["mb_per_video"] == pytest.approx(flow_mb / 2)
    f = report["ours"]["flow"]
    assert len(f["per_video"]) == 2
    for t in f["per_video"]:
        assert 1 <= t["solver_calls"] <= 16 and 0 < t["solver_seconds"] < t["process_seconds"]
    assert 0 < report["solver_fraction"] < 1
    assert report["solver_fraction"] == pytest.approx(f["solver_seconds"] / f["process_seconds"])


@pytest.mark.slow
def test_torch_entry_is_measured_or_says_why(quick):
    _, _, report = quick
    tv = report["torch_vs_opencv"]
    if tv["measured"]:
        assert tv["torch_pairs_per_s"] > 0 and tv["opencv_pairs_per_s"] > 0 and tv["pairs"] >= 1
        assert tv["torch_over_opencv"] == pytest.approx(tv["opencv_seconds"] / tv["torch_seconds"])
    else:
        assert tv["reason"]


@pytest.mark.slow
def test_inputs_are_reused_not_rendered_again(quick):
    out, _, report = quick
    folder = out / "inputs" / "quick"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mp4")}
    videos, portrait = bench.make_inputs(folder, bench.QUICK, 1)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mp4")} == before
    assert [v.id for v in videos] == [v["id"] for v in report["inputs"]] and portrait.id == videos[-1].id


def test_torch_failure_is_reported_not_raised(monkeypatch):
    monkeypatch.setitem(sys.modules, "extract.tvl1_torch", None)   # makes the import fail
    entry = bench.time_torch_vs_opencv(Video("x", "/nonexistent.mp4", "neutral", "test"), bench.QUICK, 1)
    assert entry["measured"] is False and "does not import" in entry["reason"]


def test_picks_and_checks():
    assert bench._uniform_picks(100, 4) == [0, 25, 50, 75]
    assert bench._uniform_picks(3, 7) == [0, 1, 2, 0, 1, 2, 0]                   # shorter videos loop
    assert bench._check("speed_ratio", 1.29)["pass"] is False and bench._check("speed_ratio", 1.3)["pass"] is True
    assert bench._check("decode_seconds", 1.49)["pass"] is True and bench._check("decode_seconds", 1.5)["pass"] is False
    assert bench._check("solver_fraction", None)["pass"] is None


@pytest.mark.slow
def test_tvl1_benchmark_times_both_solvers_and_their_agreement(capsys):
    from benchmarks import tvl1

    assert tvl1.main(["--pairs", "2", "--size", "32", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "opencv:" in out and "torch :" in out and "ratio : torch / opencv" in out
    epe = float(out.split("mean EPE ")[1].split(" px")[0])
    assert epe <= 0.15   # the agreement the flow stage's torch backend promises
