"""`make gpu-check` (benchmarks/gpu_check.py) without a GPU: the refusal, and every measuring and
reporting function on the CPU on tiny inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import gpu_check
from extract import manifest
from extract.manifest import Video
from features import modalities
from tests import videos as tv
from tests.cli import run_cli

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@no_cuda
def test_refuses_without_cuda_in_one_line_exit_2(tmp_path):
    done = run_cli("benchmarks.gpu_check", "--out", tmp_path / "out", timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "CUDA" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()  # refused before doing anything


def test_relative_difference_is_the_worst_videos():
    ref = [np.ones((2, 4), np.float32), np.full((1, 4), 2.0, np.float32)]
    got = [ref[0] * (1 + 1e-3), ref[1] * (1 + 1e-5)]
    assert gpu_check.relative_difference(got, ref) == pytest.approx(1e-3, rel=1e-4)
    assert gpu_check.relative_difference(ref, ref) == 0.0
    assert gpu_check.relative_difference([np.ones((3, 4))], [np.ones((2, 4))]) == float("inf")


def test_exact_float32_switches_tf32_off_and_restores_it():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with gpu_check.exact_float32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpucheck")
    rows = [Video(id=f"c{i}", path=str(tv.make_video(root / f"c{i}.mp4", seed=i, audio=True)), label="ab"[i % 2],
                  split="train", text=f"caption {i} #fun") for i in range(2)]
    return root, rows, manifest.write_manifest(root / "manifest.csv", rows)


@pytest.mark.slow
def test_flow_check_on_the_cpu_agrees_with_opencv(clips):
    _, rows, _ = clips
    first, second = gpu_check.sample_pairs(rows, 3, 32)
    assert first.shape == second.shape == (3, 32, 32) and first.dtype == np.uint8
    r = gpu_check.flow_check(first, second, "cpu", batches=(4,))
    assert r["mean_epe_px"] <= gpu_check.TARGETS["flow_epe_px"] and r["within_one_level"] >= 0.95 and r["pass"]
    assert set(r["pairs_per_second"]) == {"4"} and r["pairs_per_second"]["4"] > 0


def test_sample_pairs_says_when_there_are_too_few(clips, tmp_path):
    broken = Video(id="x", path=str(tv.make_text_as_mp4(tmp_path / "x.mp4")), label="a", split="train")
    with pytest.raises(RuntimeError, match="only 0 frame pairs"):
        gpu_check.sample_pairs([broken], 2, 32)


@pytest.mark.slow
@pytest.mark.parametrize("modality", modalities.names(default_only=True))
def test_backbone_check_on_the_cpu(modality):
    r = gpu_check.backbone_check(modality, "cpu", compare=1, timed=2, frames_=8, size=32)
    # the CPU against itself: float32 and "autocast" (a no-op on the CPU) are exact
    assert r["float32_rel"] <= 1e-6 and r["autocast_rel"] <= 1e-6 and r["pass"]
    assert r["float32_videos_per_second"] > 0 and r["autocast_videos_per_second"] > 0


@pytest.mark.slow
def test_a_backbone_that_disagrees_fails_its_target(monkeypatch):
    real = gpu_check.backbones.load_backbone

    def skewed(modality, device="cpu", amp=True, **kw):
        bb = real(modality, device=device, amp=amp, **kw)
        if not amp:  # loads: the CPU reference first, then the "device" in float32, which drifts by 1e-3
            skewed.calls += 1
            if skewed.calls == 2:
                embed = bb.embed
                bb.embed = lambda items, **k: [x * np.float32(1.001) for x in embed(items, **k)]
        return bb

    skewed.calls = 0
    monkeypatch.setattr(gpu_check.backbones, "load_backbone", skewed)
    r = gpu_check.backbone_check("audio", "cpu", compare=1, timed=1, frames_=8)
    assert r["float32_rel"] == pytest.approx(1e-3, rel=1e-3) and not r["pass"]


@pytest.mark.slow
def test_whole_check_on_the_cpu_writes_both_reports(clips, tmp_path):
    _, rows, m = clips
    report = gpu_check.run_checks("cpu", tmp_path / "out", rows, m, budget=600, pairs=2, size=32, batches=(2,),
                                  num_frames=8, jobs=1, backbone_shape={"frames_": 8, "size": 32},
                                  timed=1)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["pass"] and report["pass"], (saved["errors"], saved["skipped"])
    assert [b["modality"] for b in saved["backbones"]] == modalities.names(default_only=True)
    assert [r["step"] for r in saved["stages"]["rows"]][:3] == ["frames stage", "flow stage (torch TV-L1)", "audio stage"]
    assert all(r["exit_code"] == 0 for r in saved["stages"]["rows"])
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## TV-L1" in md and "| rgb2d |" in md and "flow stage (torch TV-L1)" in md


def test_a_spent_budget_skips_the_later_steps(clips, tmp_path):
    _, rows, m = clips
    report = gpu_check.run_checks("cpu", tmp_path / "out", rows, m, budget=0, pairs=2, size=32, batches=(2,))
    assert report["flow"] is None and report["backbones"] == [] and report["stages"] is None
    assert len(report["skipped"]) == 2 + len(modalities.names(default_only=True)) and not report["pass"]
    assert "budget" in (tmp_path / "out" / "report.md").read_text()
