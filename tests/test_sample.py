"""The synthetic sample dataset (extract.sample) and the test-media factory (tests/videos.py)."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from scipy.stats import spearmanr

from tests import videos as V
from extract import sample as S
from extract.manifest import read_manifest

SHORT = dict(min_seconds=1.0, max_seconds=1.5)      # short clips keep the dataset tests fast


# ----------------------------------------------------------------------------- the media factory


def _close(decoded: np.ndarray, expected: np.ndarray, tol: float = 3.0) -> bool:
    return decoded.shape == expected.shape and float(np.abs(decoded.astype(int) - expected.astype(int)).mean()) < tol


def test_video_factory(tmp_path):
    # plain: decodes to exactly the frames it was rendered from, within codec noise
    p = V.make_video(tmp_path / "plain.mp4", width=96, height=64, seconds=1.0)
    info = V.describe(p)
    assert info["video"] == {"codec": "h264", "pix_fmt": "yuv420p", "width": 96, "height": 64, "fps": 30.0, "rotation": 0.0}
    assert info["audio"] == {"codec": "aac", "rate": V.AUDIO_RATE, "channels": 1}
    assert info["duration"] == pytest.approx(1.0, abs=0.05)
    frames = V.decode_frames(p)
    assert _close(frames, np.stack([V.render_frame(i, 96, 64) for i in range(30)]))
    assert frames[0, 2, 2, 0] > 180 and frames[0, 2, 2, 2] < 80           # red marker top-left: RGB order
    audio = V.decode_audio(p, 16000)[:, 0]
    assert np.argmax(np.abs(np.fft.rfft(audio))) * 16000 / audio.size == pytest.approx(V.TONE_HZ, abs=2)

    # rotation metadata (phone convention: 90 = clockwise); FFmpeg applies it when decoding
    p = V.make_video(tmp_path / "rot.mp4", rotate=90)
    assert V.describe(p)["video"]["rotation"] == -90.0                   # display matrix, counter-clockwise
    assert _close(V.decode_frames(p), np.stack([V.displayed(V.render_frame(i), 90) for i in range(30)]))
    assert V.decode_frames(p, autorotate=False).shape == (30, 64, 96, 3)

    # static pattern: nothing changes between frames
    p = V.make_video(tmp_path / "static.mp4", pattern="static", audio=False)
    frames = V.decode_frames(p).astype(int)
    assert V.describe(p)["audio"] is None
    assert np.abs(np.diff(frames, axis=0)).mean() < 1.0

    # another codec and container
    p = V.make_video(tmp_path / "mpeg4.avi", codec="mpeg4")
    assert V.describe(p)["video"]["codec"] == "mpeg4" and V.describe(p)["audio"]["codec"] == "mp3"
    assert _close(V.decode_frames(p), np.stack([V.render_frame(i) for i in range(30)]), tol=4.0)

    # audio only
    p = V.make_audio_only(tmp_path / "audio.mp4", 1.5)
    info = V.describe(p)
    assert info["video"] is None and info["audio"]["codec"] == "aac" and info["duration"] == pytest.approx(1.5, abs=0.05)

    # broken files
    assert not V.describe(V.make_truncated(tmp_path / "cut.mp4"))["readable"]       # index cut off
    p = V.make_truncated(tmp_path / "cut_faststart.mp4", faststart=True)
    assert V.describe(p)["readable"] and 0 < len(V.frame_times(p)) < 60               # frames cut off
    p = V.make_zero_byte(tmp_path / "empty.mp4")
    assert p.stat().st_size == 0 and not V.describe(p)["readable"]
    p = V.make_text_as_mp4(tmp_path / "text.mp4")
    assert p.stat().st_size > 0 and not V.describe(p)["readable"]

    # one frame
    p = V.make_one_frame_video(tmp_path / "one.mp4")
    assert _close(V.decode_frames(p), V.render_frame(0)[None])

    # variable frame rate: uneven timestamps survive
    p = V.make_vfr_video(tmp_path / "vfr.mp4")
    np.testing.assert_allclose(V.frame_times(p), V.vfr_times(), atol=2e-3)
    assert _close(V.decode_frames(p), np.stack([V.render_frame(i) for i in range(len(V.vfr_times()))]))

    # 4K
    p = V.make_4k_clip(tmp_path / "4k.mp4")
    info = V.describe(p)["video"]
    assert (info["width"], info["height"]) == (3840, 2160)
    assert V.decode_frames(p, size=(384, 216)).shape == (6, 216, 384, 3)

    # odd sizes, two ways
    for name, codec, pix_fmt in (("odd.mp4", "libx264", "yuv444p"), ("odd.avi", "mpeg4", "yuv420p")):
        p = V.make_odd_size(tmp_path / name, 721, 561, codec=codec)
        info = V.describe(p)["video"]
        assert (info["width"], info["height"], info["pix_fmt"]) == (721, 561, pix_fmt)
        frames = V.decode_frames(p)
        assert _close(frames, np.stack([V.render_frame(i, 721, 561) for i in range(len(frames))]), tol=4.0)


# ----------------------------------------------------------------------------- the plan


def test_plan_is_deterministic_balanced_and_nested():
    a, b = S.plan_dataset(60, seed=0), S.plan_dataset(60, seed=0)
    assert a == b
    assert [p.fingerprint() for p in a] == [p.fingerprint() for p in b]
    assert S.plan_dataset(60, seed=1) != a
    labels = [p.label for p in a]
    assert {c: labels.count(c) for c in S.CLASSES} == {c: 20 for c in S.CLASSES}
    assert [p.id for p in a[:3]] == ["neg_0000", "neg_0001", "neg_0002"] and a[-1].id == "pos_0019"
    assert all(3.0 <= p.seconds <= 6.0 and p.frames == round(p.seconds * 30) for p in a)
    # a video's parameters depend on (seed, class, index) only
    small = S.plan_dataset(15, seed=0)
    assert set(small) <= set(a)
    assert [p.id for p in a if not p.has_audio] == list(S.NO_AUDIO_IDS)
    assert 0.7 < np.mean([p.text is not None for p in a]) < 0.97
    assert S.per_class(61) == [21, 20, 20]
    with pytest.raises(ValueError):
        S.plan_dataset(12)


def test_each_cue_informative_but_imperfect_and_combining_helps():
    """On many plans: every channel's cue predicts the class better than chance but far from
    perfectly, with independent errors, so a vote over channels beats each one."""
    plans = S.plan_dataset(1500, seed=0)
    y = np.array([S.CLASSES.index(p.label) for p in plans])
    latent = {"appearance": [p.brightness for p in plans], "motion": [np.log(p.speed) for p in plans],
              "sound": [np.log(p.root_hz) for p in plans]}
    preds, accuracy = [], {}
    for name, values in latent.items():
        x = np.asarray(values)
        centres = np.array([x[y == c].mean() for c in range(3)])
        assert np.all(np.diff(centres) > 0), name                        # ordered negative < neutral < positive
        pred = np.argmin(np.abs(x[:, None] - centres), axis=1)
        accuracy[name] = (pred == y).mean()
        preds.append(pred)
        cue = np.array([getattr(p, {"appearance": "visual_cue", "motion": "motion_cue", "sound": "audio_cue"}[name]) for p in plans])
        assert 0.8 < (cue == y).mean() < 0.9                              # 15 % contradicting cues
    assert all(0.55 < a < 0.85 for a in accuracy.values()), accuracy
    votes = np.stack(preds, axis=1)
    vote = np.array([np.bincount(v, minlength=3).argmax() if np.bincount(v, minlength=3).max() > 1 else v[0] for v in votes])
    assert (vote == y).mean() > max(accuracy.values()) + 0.05, ((vote == y).mean(), accuracy)
    text_cue = np.array([p.text_cue for p in plans])
    assert 0.8 < (text_cue == y).mean() < 0.9


# ----------------------------------------------------------------------------- the rendered dataset


@pytest.fixture(scope="module")
def short45(tmp_path_factory):
    out = tmp_path_factory.mktemp("short45")
    S.generate(out, videos=45, seed=0, log=lambda *a: None, **SHORT)
    return out


@pytest.fixture(scope="module")
def short15(tmp_path_factory):
    """The first 5 videos per class of `short45`, rendered again, through the command line, in one process."""
    out = tmp_path_factory.mktemp("short15")
    assert S.main(["--out", str(out), "--videos", "15", "--seed", "0", "--jobs", "1",
                   "--min-seconds", "1", "--max-seconds", "1.5"]) == 0
    return out


def _frame_means(path) -> np.ndarray:
    return V.decode_frames(path, size=(90, 160)).reshape(-1, 160 * 90 * 3).mean(axis=1)


def test_same_seed_same_dataset(tmp_path, short15, short45):
    # two runs with the same arguments: the same manifest, the same pictures and sound
    first, second = tmp_path / "a", tmp_path / "b"
    S.generate(first, videos=15, seed=0, jobs=2, log=lambda *a: None, min_seconds=0.5, max_seconds=0.5)
    S.generate(second, videos=15, seed=0, jobs=1, log=lambda *a: None, min_seconds=0.5, max_seconds=0.5)
    assert (first / "manifest.csv").read_bytes() == (second / "manifest.csv").read_bytes()
    for plan in S.plan_dataset(15, seed=0, min_seconds=0.5, max_seconds=0.5):
        rel = f"{plan.label}/{plan.id}.mp4"
        a, b = _frame_means(first / rel), _frame_means(second / rel)
        assert a.shape == (plan.frames,) == (15,) and np.allclose(a, b, atol=0.5)
        if plan.has_audio:
            np.testing.assert_allclose(V.decode_audio(first / rel, channels=2), V.decode_audio(second / rel, channels=2), atol=1e-3)
    # a video depends on (seed, class, index) only: the 15-video run repeats the 45-video run's first videos
    for plan in S.plan_dataset(15, seed=0, **SHORT):
        rel = f"{plan.label}/{plan.id}.mp4"
        a, b = _frame_means(short15 / rel), _frame_means(short45 / rel)
        assert a.shape == (plan.frames,) and np.allclose(a, b, atol=0.5)
    other_seed = S.plan_dataset(15, seed=1, **SHORT)
    assert all(p.fingerprint() != q.fingerprint() for p, q in zip(other_seed, S.plan_dataset(15, seed=0, **SHORT)))


def test_manifest(short45):
    videos = read_manifest(short45 / "manifest.csv")
    assert len(videos) == 45 and [v.id for v in videos] == [p.id for p in S.plan_dataset(45, 0, **SHORT)]
    for label in S.CLASSES:
        mine = [v for v in videos if v.label == label]
        assert len(mine) == 15 and all(v.id.startswith(S.PREFIX[label] + "_") for v in mine)
        assert sorted(v.split for v in mine) == ["test"] * 3 + ["train"] * 9 + ["val"] * 3
        assert all(os.path.isfile(v.path) for v in mine)
    with open(short45 / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["path"] == "negative/neg_0000.mp4"                      # relative to the manifest
    plans = {p.id: p for p in S.load_plans(short45)}
    for v in videos:
        assert v.text == plans[v.id].text
        caption = short45 / v.label / f"{v.id}.txt"
        assert caption.is_file() == bool(v.text)
        if v.text:
            assert caption.read_text(encoding="utf-8").strip() == v.text
    assert sum(v.text is None for v in videos) >= 2
    leftovers = [p for p in short45.rglob(".*")]
    assert leftovers == []                                                 # no temporary files


def test_default_video_properties(tmp_path):
    """Videos as the default arguments make them: portrait 360x640, 30 fps, H.264 + AAC, 3-6 s."""
    plans = [S.plan_video(label, i, seed=0) for label, i in (("negative", 0), ("neutral", 1), ("positive", 2))]
    for plan in plans:
        info = V.describe(S.render_video(plan, tmp_path / f"{plan.id}.mp4"))
        assert info["video"] == {"codec": "h264", "pix_fmt": "yuv420p", "width": 360, "height": 640, "fps": 30.0, "rotation": 0.0}
        assert 3.0 <= info["duration"] <= 6.1 and info["duration"] == pytest.approx(plan.seconds, abs=0.1)
        assert len(V.frame_times(tmp_path / f"{plan.id}.mp4")) == plan.frames
        if plan.has_audio:
            assert info["audio"] == {"codec": "aac", "rate": 44100, "channels": 2}
        else:
            assert plan.id == "neu_0001" and info["audio"] is None


def _measure(path, has_audio: bool) -> dict:
    frames = V.decode_frames(path, size=(90, 160)).astype(np.float32)
    grey = frames.mean(axis=3)
    out = {"appearance": float((frames * [0.299, 0.587, 0.114]).sum(axis=3).mean()),
           # share of pixels that change by more than 25 levels from one frame to the next
           "motion": float(np.log((np.abs(np.diff(grey, axis=0)) > 25).mean() + 1e-4))}
    if has_audio:
        a = V.decode_audio(path, 16000, channels=2).mean(axis=1)
        power = np.abs(np.fft.rfft(a)) ** 2
        f = np.fft.rfftfreq(a.size, 1 / 16000)
        band = (f > 60) & (f < 1500)
        out["sound"] = float(np.log((power[band] * f[band]).sum() / power[band].sum()))   # spectral centroid
    return out


def _loo_nearest_centre(x: np.ndarray, y: np.ndarray) -> float:
    hits = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        centres = np.array([x[keep & (y == c)].mean() for c in range(3)])
        hits += int(np.argmin(np.abs(centres - x[i])) == y[i])
    return hits / len(y)


def test_each_modality_carries_class_signal_but_not_perfectly(short45):
    plans = [p for p in S.load_plans(short45) if p.has_audio]
    stats = [_measure(short45 / p.label / f"{p.id}.mp4", p.has_audio) for p in plans]
    y = np.array([S.CLASSES.index(p.label) for p in plans])
    drawn = {"appearance": [p.brightness for p in plans], "motion": [p.speed for p in plans],
             "sound": [p.root_hz for p in plans]}
    for name in ("appearance", "motion", "sound"):
        x = np.array([s[name] for s in stats])
        # what was drawn is what the pixels and samples show
        assert spearmanr(x, drawn[name])[0] > 0.6, name
        means = [x[y == c].mean() for c in range(3)]
        assert means[0] < means[1] < means[2], (name, means)
        accuracy = _loo_nearest_centre(x, y)
        assert 0.45 <= accuracy < 1.0, (name, accuracy)                  # chance is 1/3


def test_idempotent_rerun(short15, short45, capsys):
    out = short15
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert S.main(["--out", str(out), "--videos", "15", "--seed", "0", "--min-seconds", "1", "--max-seconds", "1.5"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files
    assert all((p.stat().st_mtime_ns, p.read_bytes()) == before[p] for p in files)

    # a lost video is rendered again, and only that one
    lost = out / "positive" / "pos_0002.mp4"
    lost.unlink()
    S.generate(out, videos=15, seed=0, log=lambda *a: None, **SHORT)
    assert lost.is_file()
    assert np.allclose(_frame_means(lost), _frame_means(short45 / "positive" / "pos_0002.mp4"), atol=0.5)
    others = [p for p in files if p.suffix == ".mp4" and p != lost]
    assert all(p.stat().st_mtime_ns == before[p][0] for p in others)
    assert (out / "manifest.csv").read_bytes() == before[out / "manifest.csv"][1]


def test_fewer_videos_removes_what_the_last_run_made(tmp_path):
    S.generate(tmp_path, videos=16, seed=0, log=lambda *a: None, min_seconds=0.5, max_seconds=0.5)
    assert (tmp_path / "negative" / "neg_0005.mp4").is_file()
    S.generate(tmp_path, videos=15, seed=0, log=lambda *a: None, min_seconds=0.5, max_seconds=0.5)
    assert not (tmp_path / "negative" / "neg_0005.mp4").exists()
    assert len(read_manifest(tmp_path / "manifest.csv")) == 15


def test_command_line_errors(tmp_path, capsys):
    assert S.main(["--out", str(tmp_path), "--videos", "12"]) == 2
    assert "at least 15" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        S.main(["--out", str(tmp_path), "--seed", "-1"])
