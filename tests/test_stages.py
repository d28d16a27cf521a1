"""The three extraction stages on good and bad input: outputs, failures, resume, backends.

Small geometry throughout (8 frames, 32 px) so the suite stays quick on two cores.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from extract import audio, claims, cli, clip, flow, frames, manifest, media, records, stage
from extract.layout import Work, file_key
from extract.manifest import Video
from tests import videos as tv
from tests.cli import run_cli, start_cli

T, S = 8, 32
FRAME_SETTINGS = frames.FrameSettings(num_frames=T, size=S, timeout=60)
FLOW_SETTINGS = flow.FlowSettings(num_frames=T, size=S, timeout=60)
AUDIO_SETTINGS = audio.AudioSettings(timeout=60)
GOOD = ["good", "short", "rotated", "odd size", "4k", "vfr", "one frame", "no audio", "clé ü", "../escape"]
BAD = {"missing": "file not found", "zero byte": "empty file", "truncated": "not a readable media file",
       "text": "not a readable media file", "audio only": "audio-only file"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[Video]]:
    root = tmp_path_factory.mktemp("media")
    made = {
        "good": tv.make_video(root / "good.mp4", seconds=1.0),
        "short": tv.make_video(root / "short.mp4", frames=5),
        "rotated": tv.make_video(root / "rotated.mp4", rotate=90),
        "odd size": tv.make_odd_size(root / "odd.mp4", 721, 561),
        "4k": tv.make_4k_clip(root / "4k.mp4"),
        "vfr": tv.make_vfr_video(root / "vfr.mp4"),
        "one frame": tv.make_one_frame_video(root / "one.mp4", audio=True),
        "no audio": tv.make_video(root / "noaudio.mp4", audio=False),
        "clé ü": tv.make_video(root / "dir with space" / "vidéo ü.mp4", seed=3),
        "../escape": tv.make_video(root / "escape.mp4", seed=4),
        "missing": root / "does-not-exist.mp4",
        "zero byte": tv.make_zero_byte(root / "zero.mp4"),
        "truncated": tv.make_truncated(root / "truncated.mp4"),
        "text": tv.make_text_as_mp4(root / "text.mp4"),
        "audio only": tv.make_audio_only(root / "audio_only.mp4"),
    }
    rows = [Video(id=k, path=str(p), label="pos" if i % 2 else "neg", split="train") for i, (k, p) in enumerate(made.items())]
    manifest.write_manifest(root / "manifest.csv", rows)
    return root, rows


@pytest.fixture(scope="module")
def work(dataset, tmp_path_factory):
    """All three stages run once over the dataset (jobs=1: the test is about behaviour, not speed)."""
    _, rows = dataset
    w = tmp_path_factory.mktemp("work")
    summaries = {
        "frames": stage.run_stage(frames.STAGE, rows, w, FRAME_SETTINGS, jobs=1),
        "flow": stage.run_stage(flow.STAGE, rows, w, FLOW_SETTINGS, jobs=1),
        "audio": stage.run_stage(audio.STAGE, rows, w, AUDIO_SETTINGS, jobs=1),
    }
    return w, summaries


def test_frames_of_every_good_video(work):
    w, summaries = work
    assert (summaries["frames"].done, summaries["frames"].failed) == (len(GOOD), len(BAD))
    for vid in GOOD:
        x = frames.load(w, vid)
        assert x.shape == (T, S, S, 3) and x.dtype == np.uint8, vid


def test_each_bad_input_is_one_recorded_failure_with_a_clear_reason(work):
    w, _ = work
    failures = records.read_failures(w, "frames")
    assert set(failures) == set(BAD)
    for vid, expected in BAD.items():
        assert expected in failures[vid], (vid, failures[vid])
    with open(Work(w).failures("frames"), newline="") as f:
        row = next(csv.DictReader(f))
    assert set(row) == {"id", "path", "stage", "reason"} and row["stage"] == "frames"


def test_later_stages_skip_what_failed_upstream_and_say_so(work):
    w, summaries = work
    for name in ("flow", "audio"):
        s = summaries[name]
        assert (s.done, s.failed, s.upstream) == (len(GOOD), 0, len(BAD))
        assert s.exit_code == cli.EXIT_SOME_FAILED
        assert "failed upstream" in s.line(w)


def test_nothing_is_written_outside_the_work_folder(work):
    w, _ = work
    inside = [p for p in w.rglob("*") if p.is_file()]
    assert len([p for p in inside if p.parent.name == "frames" and p.suffix == ".npz"]) == len(GOOD)
    assert not list(w.parent.glob("escape*")) and not (w.parent / "frames").exists()
    key = file_key("../escape")
    assert "/" not in key and not key.startswith(".")


def test_frames_are_picked_uniformly_in_order(work):
    w, _ = work
    x = frames.load(w, "good").astype(float)
    # The background grey level rises 6 per source frame: 30 frames, 8 picks 0, 3, 7, ... 26.
    picks = clip.pick_indices(30, T)
    assert picks.tolist() == [0, 3, 7, 11, 15, 18, 22, 26]
    level = np.median(x[:, S // 2:, :, 1], axis=(1, 2))  # green, below the marker; the bar is a minority
    expected = np.array([tv.frame_level(i) for i in picks], float)
    assert np.abs(level - expected).max() < 12


def test_short_video_loops(work):
    w, _ = work
    with np.load(Work(w).output("frames", "short", ".npz")) as z:
        meta = str(z["meta"])
    assert '"picks": [0, 1, 2, 3, 4, 0, 1, 2]' in meta
    x = frames.load(w, "short").astype(int)
    assert np.abs(x[0] - x[5]).mean() < 3


def test_rotation_metadata_is_honoured(tmp_path, dataset):
    root, rows = dataset
    video = next(v for v in rows if v.id == "rotated")
    settings = frames.FrameSettings(num_frames=T, size=S, resize="squash")
    out = tmp_path / "r.npz"
    frames.process(video, out, settings)
    with np.load(out) as z:
        got = frames.decode_jpegs(z["jpeg"], z["offsets"])[0].astype(float)
    shown = cv2.resize(tv.displayed(tv.render_frame(0), 90), (S, S), interpolation=cv2.INTER_AREA).astype(float)
    unrotated = cv2.resize(tv.render_frame(0), (S, S), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(got - shown).mean() < 12
    assert np.abs(got - shown).mean() < 0.5 * np.abs(got - unrotated).mean()


def test_crop_geometry_keeps_aspect_and_centres():
    s = clip.ClipSettings(size=224)
    assert clip.geometry_filter(1080, 1920, s) == "scale=256:455:flags=bilinear,crop=224:224:16:115"
    assert clip.geometry_filter(721, 561, s) == "scale=329:256:flags=bilinear,crop=224:224:52:16"
    assert clip.geometry_filter(1080, 1920, clip.ClipSettings(size=224, resize="squash")) == "scale=224:224:flags=bilinear"


def test_flow_shapes_and_one_frame_video(work):
    w, _ = work
    for vid in GOOD:
        q = flow.load(w, vid)
        assert q.shape == (T, S, S, 2) and q.dtype == np.uint8, vid
    assert np.all(flow.load(w, "one frame") == flow.quantise(np.zeros(1), 20.0)[0])


def test_flow_quantisation_round_trip():
    f = np.array([-25.0, -20.0, -7.3, 0.0, 0.05, 7.3, 19.99, 20.0, 31.0], np.float32)
    q = flow.quantise(f, 20.0)
    assert q.dtype == np.uint8
    assert q[0] == q[1] == 0 and q[-1] == q[-2] == 255 and q[3] == 128
    back = flow.dequantise(q, 20.0)
    inside = np.abs(f) <= 20
    assert np.abs(back[inside] - f[inside]).max() <= 20.0 / 255 + 1e-6
    assert np.all(np.diff(q.astype(int)) >= 0)


def _smooth_texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (h, w)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), 3.0)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return (40 + 180 * tex).astype(np.uint8)


def test_flow_is_per_source_frame_not_per_pick(tmp_path):
    """A texture moving 1 px per source frame gives ~1 px of flow although picks are 5 frames apart."""
    wide = _smooth_texture(96, 96 + 60)
    raw = b"".join(np.repeat(wide[:, 60 - i: 60 - i + 96, None], 3, axis=2).tobytes() for i in range(40))
    path = tmp_path / "pan.mp4"
    tv._ffmpeg(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "96x96", "-r", "30", "-i", "pipe:0",
                "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-pix_fmt", "yuv420p", path], stdin=raw)
    video = Video(id="pan", path=str(path), label="a", split="train")
    settings = flow.FlowSettings(num_frames=T, size=96, resize="squash")
    f = flow.clip_flow(video, settings)
    centre = f[:, 24:72, 24:72]
    assert np.median(centre[..., 0]) == pytest.approx(1.0, abs=0.25)
    assert abs(np.median(centre[..., 1])) < 0.25


def test_audio_examples_missing_and_padded(work):
    w, summaries = work
    x = audio.load(w, "good")
    assert x.dtype == np.float32 and x.shape == (1, 96, 64)
    assert audio.load(w, "no audio") is None
    with np.load(Work(w).output("audio", "one frame", ".npz")) as z:
        assert bool(z["padded"]) and z["examples"].shape == (1, 96, 64)
    notes = summaries["audio"].notes
    assert notes[audio.NO_AUDIO_NOTE] == 3  # "no audio", and the odd-size and 4K clips are made silent
    assert notes[audio.PADDED_NOTE] >= 1


def test_audio_matches_the_front_end_on_the_decoded_track(work, dataset):
    w, _ = work
    root, rows = dataset
    path = next(v.path for v in rows if v.id == "good")
    info = media.probe(path)
    wave = media.decode_audio(path, info.audio_channels, info.audio_rate)
    np.testing.assert_allclose(audio.load(w, "good"), audio.log_mel_examples(wave, info.audio_rate), atol=1e-5)
    # The 440 Hz tone dominates the mel band that contains it.
    band = np.argmax(audio.load(w, "good")[0].mean(axis=0))
    edges = 700 * (np.exp(np.linspace(1127 * np.log(1 + 125 / 700), 1127 * np.log(1 + 7500 / 700), 66) / 1127) - 1)
    assert edges[band] < 440 < edges[band + 2]


def test_rerun_skips_done_videos_and_retries_failures(work, dataset):
    w, _ = work
    _, rows = dataset
    before = {p: p.stat().st_mtime_ns for p in (w / "frames").glob("*.npz")}
    again = stage.run_stage(frames.STAGE, rows, w, FRAME_SETTINGS, jobs=1)
    assert (again.done, again.skipped, again.failed) == (0, len(GOOD), len(BAD))
    assert {p: p.stat().st_mtime_ns for p in (w / "frames").glob("*.npz")} == before


def test_other_settings_in_the_same_work_folder_are_refused(work, dataset):
    w, _ = work
    _, rows = dataset
    with pytest.raises(claims.SettingsMismatch, match="num_frames: 8 there, 16 now"):
        stage.run_stage(frames.STAGE, rows, w, frames.FrameSettings(num_frames=16, size=S), jobs=1)


def test_cli_summary_line_and_exit_codes(dataset, tmp_path):
    root, _ = dataset
    done = run_cli("extract.frames", "--manifest", str(root / "manifest.csv"), "--work", str(tmp_path),
                "--num-frames", str(T), "--size", str(S), "--jobs", "2")
    assert done.returncode == cli.EXIT_SOME_FAILED, done.stderr
    assert f"frames: done {len(GOOD)} / skipped 0 / failed {len(BAD)}" in done.stdout
    bad = run_cli("extract.frames", "--manifest", str(tmp_path / "none.csv"), "--work", str(tmp_path))
    assert bad.returncode == cli.EXIT_USAGE and "manifest not found" in bad.stderr


def test_hung_ffmpeg_is_killed_and_recorded(dataset, tmp_path):
    root, rows = dataset
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    good = [v for v in rows if v.id == "good"]
    manifest.write_manifest(tmp_path / "m.csv", good)
    env = {**os.environ, "DMVER_FFMPEG": str(fake)}
    started = time.monotonic()
    done = run_cli("extract.frames", "--manifest", str(tmp_path / "m.csv"), "--work", str(tmp_path / "w"),
                "--timeout", "1", "--jobs", "1", env=env)
    assert time.monotonic() - started < 20
    assert done.returncode == cli.EXIT_ALL_FAILED  # its one video failed
    assert "DecodeTimeout" in records.read_failures(tmp_path / "w", "frames")["good"]


def test_killed_run_resumes_to_the_same_outputs(dataset, tmp_path):
    """SIGKILL in the middle of the flow stage, then a re-run: same outputs as one clean run."""
    root, rows = dataset
    many = [Video(id=f"copy {i}", path=next(v.path for v in rows if v.id == "good"), label="a", split="train")
            for i in range(6)]
    m = manifest.write_manifest(tmp_path / "m.csv", many)
    args = ["--manifest", str(m), "--num-frames", str(T), "--size", "96", "--jobs", "1"]
    killed = tmp_path / "killed"
    proc = start_cli("extract.flow", *args, "--work", killed)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((killed / "flow").glob("*.npz"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < len(list((killed / "flow").glob("*.npz"))) < len(many), "the kill should land mid-run"
    (killed / "flow" / ".stale.npz.123.tmp").write_bytes(b"partial")  # as a kill during a write leaves
    assert run_cli("extract.flow", *args, "--work", str(killed)).returncode == 0
    assert run_cli("extract.flow", *args, "--work", str(tmp_path / "clean")).returncode == 0
    assert not list((killed / "flow").glob(".*"))
    for v in many:
        np.testing.assert_array_equal(flow.load(killed, v.id), flow.load(tmp_path / "clean", v.id))


def test_dask_backend_gives_the_same_outputs(dataset, work, tmp_path):
    from dask.distributed import LocalCluster

    w, _ = work
    _, rows = dataset
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        s = stage.run_stage(frames.STAGE, rows, tmp_path, FRAME_SETTINGS, backend="dask", scheduler=cluster.scheduler_address)
    assert (s.done, s.failed) == (len(GOOD), len(BAD))
    assert set(records.read_failures(tmp_path, "frames")) == set(BAD)
    for vid in GOOD:
        np.testing.assert_array_equal(frames.load(tmp_path, vid), frames.load(w, vid))


def test_grouped_flow_matches_one_video_at_a_time_and_isolates_failures(tmp_path, dataset):
    """`--batch-videos`: several videos' pairs share torch solver calls; results and failures stay per video."""
    _, rows = dataset
    chosen = [v for v in rows if v.id in ("good", "short", "one frame", "truncated", "clé ü")]
    single = flow.FlowSettings(num_frames=4, size=S, timeout=60, backend="torch", batch_pairs=5)
    grouped = flow.FlowSettings(num_frames=4, size=S, timeout=60, backend="torch", batch_pairs=5, batch_videos=5)
    assert flow.group_size(single) == 1 and flow.group_size(grouped) == 5
    calls = []

    def counted(items, settings):
        calls.append(len(items))
        return flow.process_group(items, settings)

    a = stage.run_stage(flow.STAGE, chosen, tmp_path / "a", single, jobs=1)
    b = stage.run_stage(dataclasses.replace(flow.STAGE, process_group=counted), chosen, tmp_path / "b", grouped, jobs=1)
    assert calls == [5]                                     # one call for the five videos
    assert (a.done, a.failed) == (b.done, b.failed) == (4, 1)
    assert records.read_failures(tmp_path / "b", "flow").keys() == {"truncated"}
    for v in chosen:
        if v.id != "truncated":
            x, y = flow.load(tmp_path / "a", v.id).astype(int), flow.load(tmp_path / "b", v.id).astype(int)
            assert x.shape == y.shape == (4, S, S, 2) and np.abs(x - y).max() <= 1, v.id
    # the group size is how the work runs, not what it writes: resuming with another one is fine
    again = stage.run_stage(flow.STAGE, chosen, tmp_path / "b", single, jobs=1)
    assert again.skipped == 4 and again.failed == 1


def test_a_group_that_fails_as_a_whole_is_retried_video_by_video(tmp_path, dataset, monkeypatch):
    _, rows = dataset
    chosen = [v for v in rows if v.id in ("good", "short")]

    def out_of_memory(items, settings):
        raise RuntimeError("CUDA out of memory (simulated)")

    broken = dataclasses.replace(flow.STAGE, process_group=out_of_memory)
    settings = flow.FlowSettings(num_frames=4, size=S, timeout=60, batch_videos=2)
    summary = stage.run_stage(broken, chosen, tmp_path, settings, jobs=1)
    assert (summary.done, summary.failed) == (2, 0)
