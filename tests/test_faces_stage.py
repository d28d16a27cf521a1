"""The faces stage (extract.faces) on real face videos: contract, hard cases, and every stage guarantee.

The videos are scikit-image's astronaut and matplotlib's Grace Hopper photographs moved and zoomed
over a phone-like portrait frame (benchmarks.facevideo), with the published MTCNN weights (the
session fixture `face_weights`). One run of the command over all of them is shared by the tests.
"""
from __future__ import annotations

import contextlib
import io
import json
import subprocess

import numpy as np
import pytest

from benchmarks import facevideo as fv
from extract import clip, faces, records, stage
from extract.manifest import read_manifest


def run_faces(*args) -> subprocess.CompletedProcess:
    """`python -m extract.faces ARGS` in this process (jobs 1: no worker processes to start)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = faces.main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())

W, H, FPS, SECONDS, T = 240, 320, 15, 2.0, 16
ARGS = ("--num-frames", T, "--every", 4, "--jobs", 1)


def _frames(n, place):
    """n frames from place(k) -> (frame, box)."""
    return [place(k) for k in range(n)]


def _single(name, width, cx, cy):
    image, face = fv.photo(name), fv.PHOTOS[name]
    return lambda k: fv.face_frame(image, face, W, H, cx(k), cy(k), width(k))


def _two_faces(k):
    """The astronaut large and moving, Grace Hopper small in the bottom right corner."""
    big, box = _single("astronaut", lambda k: 100 + 2 * k, lambda k: 100 + k, lambda k: 120)(k)
    small, _ = _single("hopper", lambda k: 48, lambda k: 195, lambda k: 270)(k)
    frame = big.copy()
    frame[230:H, 160:W] = small[230:H, 160:W]
    return frame, box


N = int(SECONDS * FPS)
CASES = {
    "face": _single("astronaut", lambda k: 70 + 2 * k, lambda k: 100 + k, lambda k: 140),
    "edge": _single("astronaut", lambda k: 110, lambda k: 30, lambda k: 150),     # a third of it out of frame
    "tiny": _single("astronaut", lambda k: 12, lambda k: 120, lambda k: 150),      # below the smallest face searched
    "two": _two_faces,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, face_weights):
    folder = tmp_path_factory.mktemp("faces-stage")
    truth = {}
    for vid, place in CASES.items():
        made = _frames(N, place)
        truth[vid] = np.stack([b for _, b in made])
        fv.write_frames(folder / f"{vid}.mp4", (f for f, _ in made), W, H, FPS, audio_seconds=SECONDS)
    fv.write_video(folder / "cut.mp4", W, H, SECONDS, FPS, face_range=(80, 120), face_until=SECONDS / 2)
    fv.write_video(folder / "rotated.mp4", W, H, SECONDS, FPS, face_range=(80, 120), name="hopper", rotate=90)
    (folder / "broken.mp4").write_text("not a video")
    ids = [*CASES, "cut", "rotated", "broken"]
    manifest = folder / "manifest.csv"
    manifest.write_text("id,path,label,split\n" + "".join(f"{v},{folder / v}.mp4,happy,train\n" for v in ids))
    work = folder / "work"
    done = run_faces("--manifest", manifest, "--work", work, "--weights", face_weights, *ARGS)
    return {"folder": folder, "manifest": manifest, "work": work, "done": done, "truth": truth,
            "weights": face_weights}


def _iou(a, b):
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def _picked_truth(run, vid):
    return run["truth"][vid][clip.pick_indices(N, T)]


def test_the_run_succeeds_except_the_broken_video_and_counts_videos_without_a_face(run):
    done = run["done"]
    assert done.returncode == 1, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("faces: done 6 / skipped 0 / failed 1 (of 7 videos")
    assert "; 1 videos without a face" in line                          # the tiny face only
    assert set(records.read_failures(run["work"], "faces")) == {"broken"}
    assert json.loads((run["work"] / "faces" / "settings.json").read_text())["num_frames"] == T


def test_the_output_contract(run):
    track = faces.load(run["work"], "face")
    assert isinstance(track, faces.FaceTrack)
    assert track.crops.shape == (T, 112, 112, 3) and track.crops.dtype == np.uint8
    assert track.boxes.shape == (T, 4) and track.boxes.dtype == np.float32
    assert track.scores.shape == (T,) and track.scores.dtype == np.float32
    assert track.found.shape == (T,) and track.found.dtype == bool and track.found.all()
    assert (track.scores > 0.9).all()
    assert (_iou(track.boxes, _picked_truth(run, "face")) > 0.6).all()    # boxes in source pixels
    assert track.crops.reshape(T, -1).std(1).min() > 10                  # real pictures, not blanks
    meta = faces.meta(run["work"], "face")
    assert meta["picks"] == clip.pick_indices(N, T).tolist() and meta["searched_size"] == [W, H]
    assert meta["full_searches"] < T and meta["source"]["width"] == W


def test_a_cut_from_a_face_to_no_face(run):
    track = faces.load(run["work"], "cut")
    times = clip.pick_indices(N, T) / FPS
    assert track.found[times < SECONDS / 2 - 0.1].all() and not track.found[times >= SECONDS / 2].any()
    lost = ~track.found
    assert np.isnan(track.boxes[lost]).all() and (track.scores[lost] == 0).all() and not track.crops[lost].any()


def test_a_face_below_the_smallest_searched_is_no_face_and_no_failure(run):
    track = faces.load(run["work"], "tiny")
    assert not track.found.any() and np.isnan(track.boxes).all() and not track.crops.any()


def test_a_face_cut_by_the_frame_edge(run):
    track = faces.load(run["work"], "edge")
    assert track.found.mean() >= 0.75
    truth = _picked_truth(run, "edge")
    assert (_iou(track.boxes[track.found], truth[track.found]) > 0.4).all()
    assert (track.boxes[track.found, 0] < 5).all()                      # it reaches the frame's left edge


def test_of_several_faces_the_main_one_is_kept_in_every_frame(run):
    track = faces.load(run["work"], "two")
    assert track.found.all()
    assert (_iou(track.boxes, _picked_truth(run, "two")) > 0.6).all()   # the astronaut, never Grace Hopper


def test_rotation_is_applied_before_the_search(run):
    track = faces.load(run["work"], "rotated")
    assert track.found.all()                                             # sideways faces are not found
    assert faces.meta(run["work"], "rotated")["source"]["rotation"] == 270
    assert (track.boxes[:, 2] <= W + 20).all() and (track.boxes[:, 3] <= H + 20).all()


def test_the_picks_are_the_frames_stages(run, tmp_path):
    from extract import frames

    frames.STAGE.process(read_manifest(run["manifest"])[0], tmp_path / "f.npz",
                         frames.FrameSettings(num_frames=T, size=32))
    with np.load(tmp_path / "f.npz") as z:
        assert json.loads(str(z["meta"]))["picks"] == faces.meta(run["work"], "face")["picks"]


def test_a_second_run_resumes_and_other_settings_are_refused(run):
    again = run_faces("--manifest", run["manifest"], "--work", run["work"], "--weights",
                    run["weights"], *ARGS)
    assert again.returncode == 1 and "done 0 / skipped 6 / failed 1" in again.stdout
    other = run_faces("--manifest", run["manifest"], "--work", run["work"], "--weights",
                    run["weights"], *ARGS[:2], "--every", 2)
    assert other.returncode == 2 and "settings" in other.stderr


@pytest.mark.parametrize("weights", ["missing", "random"])
def test_without_the_detector_the_command_exits_2_naming_make_weights(run, tmp_path, weights):
    folder = tmp_path / "nothing" if weights == "missing" else "random"
    done = run_faces("--manifest", run["manifest"], "--work", tmp_path / "w", "--weights", folder)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "make weights NAMES=face" in lines[0]
    assert not (tmp_path / "w" / "faces").exists()


def test_dask_backend_gives_the_same_outputs(run, tmp_path):
    from dask.distributed import LocalCluster

    rows = [v for v in read_manifest(run["manifest"]) if v.id in ("cut", "broken")]
    settings = faces.FaceSettings(num_frames=T, every=4, weights=str(run["weights"]))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        s = stage.run_stage(faces.STAGE, rows, tmp_path, settings, backend="dask", scheduler=cluster.scheduler_address)
    assert (s.done, s.failed) == (1, 1)
    ours, theirs = faces.load(tmp_path, "cut"), faces.load(run["work"], "cut")
    # the command ran torch with the cores' threads, the Dask worker with one: sums in another
    # order move boxes by a hundredth of a pixel and crop pixels by one level at most
    np.testing.assert_array_equal(ours.found, theirs.found)
    np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=0.05)
    np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-4)
    assert np.abs(ours.crops.astype(int) - theirs.crops).max() <= 2
