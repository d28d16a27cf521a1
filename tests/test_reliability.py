"""Reliability, extraction side: nothing lost, nothing stale, nothing silent.

The `caseN` in a test's name groups the tests by the kind of failure they cover: killed runs and
their workers (3), concurrent runs and settings claims (4), changed sources (5), crashes of the
run itself (6), truncated and mislabelled media (7), a manifest with a BOM (9), durable writes
(10), NaN audio (2, stage side), and probing through PyAV.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from extract import audio, claims, cli, durable, flow, frames, manifest, media, provenance, records, stage
from extract.layout import Work, file_key
from extract.manifest import Video
from tests import videos as tv
from tests.cli import run_cli, start_cli

T, S = 8, 32
FRAME_SETTINGS = frames.FrameSettings(num_frames=T, size=S, timeout=60)
FLOW_SETTINGS = flow.FlowSettings(num_frames=T, size=S, timeout=60)
AUDIO_SETTINGS = audio.AudioSettings(timeout=60)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reliability-media")
    tv.make_video(root / "a.mp4", seconds=1.0, seed=1)
    tv.make_video(root / "b.mp4", seconds=1.0, seed=2, pattern="static")
    return root


def _video(vid: str, path, **kw) -> Video:
    return Video(id=vid, path=str(path), label="a", split="train", **kw)


def _children(pid: int) -> dict[int, str]:
    """pid -> command line of the processes whose parent is `pid`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
    return found


# ----------------------------------------------------------------------------- case 3


def test_case3_workers_die_with_a_killed_stage_and_nothing_lands_in_the_reclaimed_folder(media_dir, tmp_path):
    """`extract.flow --jobs 2`, SIGKILL after 2 outputs: its workers end with it and write nothing more;
    the folder deleted and re-run at another size holds only files of that size."""
    many = [_video(f"copy {i}", media_dir / "a.mp4") for i in range(12)]
    m = manifest.write_manifest(tmp_path / "m.csv", many)
    work = tmp_path / "w"
    proc = start_cli("extract.flow", "--manifest", m, "--work", work, "--num-frames", "16", "--size", "96",
                     "--jobs", "2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list((work / "flow").glob("*.npz"))) < 2:
        time.sleep(0.02)
    workers = {pid for pid, cmd in _children(proc.pid).items() if "loky" in cmd}
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = len(list((work / "flow").glob("*.npz")))
    assert workers, "the stage should have started joblib workers"
    assert 0 < at_kill < len(many), "the kill should land mid-run"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(durable.pid_alive(p) for p in workers):
        time.sleep(0.05)
    assert not any(durable.pid_alive(p) for p in workers), "joblib workers outlived the killed stage process"
    # The reproduction: delete the folder and re-run at another size at once.
    import shutil

    shutil.rmtree(work / "flow")
    again = run_cli("extract.flow", "--manifest", str(m), "--work", str(work), "--num-frames", "4", "--size", "32",
                 "--jobs", "1")
    assert again.returncode == 0, again.stderr
    time.sleep(1.0)  # time for any straggler to write
    outputs = sorted((work / "flow").glob("*.npz"))
    assert len(outputs) == len(many)
    assert json.loads((work / "flow" / "settings.json").read_text())["size"] == 32
    for path in outputs:
        with np.load(path) as z:
            assert z["flow"].shape == (4, 32, 32, 2), path.name


def test_case3_an_output_never_lands_in_a_folder_claimed_with_other_settings(media_dir, tmp_path):
    """A worker of a run with 8 frames whose folder was deleted and claimed by a run with 16 frames
    discards its file instead of publishing it."""
    folder = Work(tmp_path).stage("frames")
    other = frames.FrameSettings(num_frames=16, size=S)
    with claims.claim_settings(folder, claims.output_settings(other), "frames settings"):
        pass
    video = _video("late", media_dir / "a.mp4")
    out = Work(tmp_path).output("frames", video.id, ".npz")
    [(vid, status, reason, _, _)] = stage._run_batch(frames.STAGE, [(video, out)], FRAME_SETTINGS, 1,
                                                     claims.output_settings(FRAME_SETTINGS))
    assert status == "failed" and "ClaimLost" in reason
    assert not out.exists() and not provenance.source_record_path(out).exists()
    assert sorted(p.name for p in folder.iterdir()) == ["settings.json", "settings.lock"]


# ----------------------------------------------------------------------------- case 4


def test_case4_concurrent_claims_with_other_settings_one_wins_the_other_is_refused(tmp_path):
    """Two runs claiming a fresh folder at the same instant with different settings: exactly one wins,
    every time; with the same settings both share it."""
    for round_ in range(20):
        folder = tmp_path / f"round{round_}"
        barrier, release = threading.Barrier(2), threading.Event()
        outcome: dict[int, str] = {}

        def claim(k):
            barrier.wait()
            try:
                with claims.claim_settings(folder, {"size": k}, "test settings"):
                    outcome[k] = "won"
                    release.wait(5)
            except claims.SettingsMismatch as exc:
                outcome[k] = "refused"
                assert "another run" in str(exc) or "was made with" in str(exc)
                release.set()

        threads = [threading.Thread(target=claim, args=(k,)) for k in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(outcome.values()) == ["refused", "won"], outcome
        winner = next(k for k, v in outcome.items() if v == "won")
        assert json.loads((folder / "settings.json").read_text()) == {"size": winner}
    with claims.claim_settings(tmp_path / "shared", {"size": 3}, "x") as first:
        with claims.claim_settings(tmp_path / "shared", {"size": 3}, "x") as second:
            assert first.alone and not second.alone


def test_case4_cli_other_settings_refused_while_a_run_holds_the_folder_same_settings_share(media_dir, tmp_path):
    many = [_video(f"v{i}", media_dir / ("a.mp4" if i % 2 else "b.mp4")) for i in range(8)]
    m = manifest.write_manifest(tmp_path / "m.csv", many)
    args = ["--manifest", str(m), "--work", str(tmp_path / "w"), "--num-frames", "16", "--jobs", "1"]
    first = start_cli("extract.flow", *args, "--size", "64", capture=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((tmp_path / "w" / "flow").glob("*.npz")):
        time.sleep(0.02)
    other = run_cli("extract.flow", *args, "--size", "48")
    same = run_cli("extract.flow", *args, "--size", "64")
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert other.returncode == cli.EXIT_USAGE
    assert other.stderr.strip().count("\n") == 0 and other.stderr.startswith("error: ")
    assert "size: 64 there, 48 now" in other.stderr
    assert same.returncode == 0, same.stderr
    assert len(list((tmp_path / "w" / "flow").glob("*.npz"))) == len(many)
    for v in many:
        assert flow.load(tmp_path / "w", v.id).shape == (16, 64, 64, 2)


def test_case4_only_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getpid()
    folder = tmp_path / "frames"
    folder.mkdir()
    names = {
        "live": durable.temp_path(folder / "x.npz").name,                 # this process is writing it
        "dead": f".tmp-{dead.pid}-h{durable.host_tag()}-0000-y.npz",      # its writer was killed
        "legacy live": f".z.npz.{live}.tmp",                              # an older version's name
        "other host": f".tmp-{live}-hffffff-0000-w.npz" if durable.host_tag() != "ffffff" else f".tmp-{live}-heeeeee-0-w.npz",
    }
    for name in names.values():
        (folder / name).write_bytes(b"partial")
    assert claims.remove_stale_temporaries(folder) == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for k, n in names.items() if k != "dead")
    # a run that holds the folder alone knows no live run can own the rest
    assert claims.remove_stale_temporaries(folder, alone=True) == 3
    assert not list(folder.iterdir())


# ----------------------------------------------------------------------------- case 5


def test_case5_a_changed_source_is_redone_and_counted(media_dir, tmp_path):
    src = tmp_path / "src.mp4"
    src.write_bytes((media_dir / "a.mp4").read_bytes())
    rows = [_video("x", src), _video("y", media_dir / "b.mp4")]
    work = tmp_path / "w"
    stages = [(frames.STAGE, FRAME_SETTINGS), (flow.STAGE, FLOW_SETTINGS), (audio.STAGE, AUDIO_SETTINGS)]
    for st, settings in stages:
        assert stage.run_stage(st, rows, work, settings, jobs=1).done == 2
    meta = frames.meta(work, "x")
    assert meta["source"]["width"] == 96 and meta["source"]["height"] == 64 and meta["source"]["fps"] == 30
    assert meta["provenance"]["path"] == str(src.resolve()) and meta["provenance"]["size"] == src.stat().st_size
    assert provenance.stale_reason(Work(work).output("frames", "x", ".npz"), rows[0]) is None

    # 1. the row now points at another video (same id)
    moved = [_video("x", media_dir / "b.mp4"), rows[1]]
    for st, settings in stages:
        s = stage.run_stage(st, moved, work, settings, jobs=1)
        assert (s.done, s.skipped, s.redone) == (1, 1, {"source changed": 1}), st.name
        assert "redone 1 (source changed)" in s.line(work)
    np.testing.assert_array_equal(frames.load(work, "x"), frames.load(work, "y"))
    np.testing.assert_array_equal(flow.load(work, "x"), flow.load(work, "y"))
    np.testing.assert_array_equal(audio.load(work, "x"), audio.load(work, "y"))

    # 2. the same path, rewritten with other content
    for st, settings in stages:
        stage.run_stage(st, rows, work, settings, jobs=1)
    src.write_bytes((media_dir / "b.mp4").read_bytes())
    s = stage.run_stage(frames.STAGE, rows, work, FRAME_SETTINGS, jobs=1)
    assert (s.done, s.redone) == (1, {"source changed": 1})
    np.testing.assert_array_equal(frames.load(work, "x"), frames.load(work, "y"))
    # 3. nothing changed: nothing redone
    s = stage.run_stage(frames.STAGE, rows, work, FRAME_SETTINGS, jobs=1)
    assert (s.done, s.skipped, s.redone) == (0, 2, {})


def test_case5_a_source_that_disappears_leaves_no_stale_output(media_dir, tmp_path):
    src = tmp_path / "gone.mp4"
    src.write_bytes((media_dir / "a.mp4").read_bytes())
    rows = [_video("x", src)]
    stage.run_stage(frames.STAGE, rows, tmp_path / "w", FRAME_SETTINGS, jobs=1)
    src.unlink()
    s = stage.run_stage(frames.STAGE, rows, tmp_path / "w", FRAME_SETTINGS, jobs=1)
    assert s.failed == 1 and "file not found" in records.read_failures(tmp_path / "w", "frames")["x"]
    assert not Work(tmp_path / "w").output("frames", "x", ".npz").exists()


def test_case5_outputs_without_a_source_record_are_redone(media_dir, tmp_path):
    rows = [_video("x", media_dir / "a.mp4")]
    stage.run_stage(frames.STAGE, rows, tmp_path, FRAME_SETTINGS, jobs=1)
    provenance.source_record_path(Work(tmp_path).output("frames", "x", ".npz")).unlink()
    s = stage.run_stage(frames.STAGE, rows, tmp_path, FRAME_SETTINGS, jobs=1)
    assert s.redone == {"no source record": 1}


# ----------------------------------------------------------------------------- case 6


def _frames_args(media_dir, tmp_path) -> list[str]:
    m = manifest.write_manifest(tmp_path / "m.csv", [_video("x", media_dir / "a.mp4")])
    return ["--manifest", str(m), "--work", str(tmp_path / "w"), "--num-frames", str(T), "--size", str(S),
            "--jobs", "1"]


def test_case6_disk_full_while_writing_failures_csv_exits_2_with_one_line(media_dir, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records, "write_failures", full)
    assert frames.main(_frames_args(media_dir, tmp_path)) == cli.EXIT_RUN_FAILED == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: disk full") and "Traceback" not in err
    assert frames.main([*_frames_args(media_dir, tmp_path), "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_case6_disk_full_while_writing_settings_json_exits_2(media_dir, tmp_path, monkeypatch, capsys):
    real = durable.atomic_write_bytes

    def full(target, data, sync_dir=False):
        if Path(target).name == "settings.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(target, data, sync_dir)

    monkeypatch.setattr(durable, "atomic_write_bytes", full)
    assert frames.main(_frames_args(media_dir, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: disk full")
    assert not (tmp_path / "w" / "frames" / "settings.json").exists()


def test_case6_an_unexpected_error_outside_a_video_exits_2(media_dir, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("worker pool\nbroke")

    monkeypatch.setattr(stage, "_execute", broken)
    assert frames.main(_frames_args(media_dir, tmp_path)) == 2
    assert capsys.readouterr().err == "error: RuntimeError: worker pool broke (--verbose for the traceback)\n"


# ----------------------------------------------------------------------------- case 7


def _one_warning(work: Path, name: str, vid: str) -> str:
    rows = records.read_warnings(work, name)
    with open(Work(work).warnings(name), newline="", encoding="utf-8") as f:
        assert csv.DictReader(f).fieldnames == ["id", "path", "stage", "warning"]
    assert [(r["id"], r["stage"]) for r in rows] == [(vid, name)]
    return rows[0]["warning"]


def test_case7_an_mp4_cut_to_its_first_third_is_taken_over_what_decodes_with_a_warning(tmp_path):
    path = tv.make_truncated(tmp_path / "third.mp4", fraction=1 / 3, faststart=True)  # 60 frames declared
    decodable = len(tv.frame_times(path))
    assert decodable < 40
    rows = [_video("cut", path)]
    s = stage.run_stage(frames.STAGE, rows, tmp_path / "w", FRAME_SETTINGS, jobs=1)
    assert (s.done, s.warnings) == (1, 1) and "1 warning:" in s.line(tmp_path / "w")
    text = _one_warning(tmp_path / "w", "frames", "cut")
    assert "declares 60 frames" in text and f"{decodable} decode" in text
    meta = frames.meta(tmp_path / "w", "cut")
    assert meta["picks"] == [int(k * decodable // T) for k in range(T)]
    assert (meta["source"]["declared_frames"], meta["source"]["decoded_frames"]) == (60, decodable)
    s = stage.run_stage(flow.STAGE, rows, tmp_path / "w", FLOW_SETTINGS, jobs=1)
    assert s.warnings == 1 and "declares 60 frames" in _one_warning(tmp_path / "w", "flow", "cut")


def test_case7_an_mkv_that_says_1s_for_10s_is_taken_whole_with_a_warning(tmp_path):
    path = tv.make_understated_mkv(tmp_path / "long.mkv", seconds=10.0, declared=1.0)
    rows = [_video("long", path)]
    s = stage.run_stage(frames.STAGE, rows, tmp_path / "w", FRAME_SETTINGS, jobs=1)
    assert (s.done, s.warnings) == (1, 1)
    text = _one_warning(tmp_path / "w", "frames", "long")
    assert "declares 30 frames" in text and "300 decode" in text
    assert frames.meta(tmp_path / "w", "long")["picks"] == [int(k * 300 // T) for k in range(T)]
    # the background level steps 6 per source frame: the last pick is frame 262, not one of the first 30
    level = np.median(frames.load(tmp_path / "w", "long")[-1, S // 2:, :, 1].astype(float))
    assert abs(level - tv.frame_level(262)) < 12
    s = stage.run_stage(audio.STAGE, rows, tmp_path / "w", AUDIO_SETTINGS, jobs=1)
    assert s.warnings == 1 and "declares 1.00 s of audio" in _one_warning(tmp_path / "w", "audio", "long")
    assert audio.load(tmp_path / "w", "long").shape[0] == 10  # 10 s of 0.96-s examples


def test_case7_good_videos_give_no_warning(media_dir, tmp_path):
    rows = [_video("a", media_dir / "a.mp4"), _video("vfr", tv.make_vfr_video(tmp_path / "vfr.mp4")),
            _video("clip", media_dir / "a.mp4", start=0.2, end=0.8)]
    for st, settings in ((frames.STAGE, FRAME_SETTINGS), (audio.STAGE, AUDIO_SETTINGS)):
        s = stage.run_stage(st, rows, tmp_path, settings, jobs=1)
        assert (s.done, s.warnings) == (3, 0), st.name
        assert not Work(tmp_path).warnings(st.name).exists()


# ----------------------------------------------------------------------------- case 9


def test_case9_a_manifest_with_a_utf8_bom_is_read(media_dir, tmp_path):
    text = f"id,path,label,split\nclé,{media_dir / 'a.mp4'},positive,train\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    [v] = manifest.read_manifest(tmp_path / "bom.csv")
    assert (v.id, v.label) == ("clé", "positive")
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbf" + f"{media_dir / 'a.mp4'} , 1\n".encode())
    assert manifest.from_list(tmp_path / "list.txt")[0].label == "positive"


# ----------------------------------------------------------------------------- case 10


class _SyncLog:
    """Records fsync (of which path) and os.replace calls in order."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
            return real_fsync(fd)

        def replace(src, dst, **kw):
            self.events.append(("replace", os.path.abspath(src), os.path.abspath(dst)))
            return real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def check(self, target: Path, folder_too: bool) -> None:
        target = os.path.abspath(target)
        at = max(i for i, e in enumerate(self.events) if e[0] == "replace" and e[2] == target)
        tmp = self.events[at][1]
        assert ("fsync", tmp, "") in self.events[:at], f"{target} renamed without an fsync of {tmp}"
        if folder_too:
            assert ("fsync", os.path.dirname(target), "") in self.events[at + 1:], f"folder of {target} not synced"


def test_case10_stage_writes_are_fsynced_before_the_rename(media_dir, tmp_path, monkeypatch):
    log = _SyncLog(monkeypatch)
    rows = [_video("x", media_dir / "a.mp4"), _video("gone", tmp_path / "none.mp4")]
    stage.run_stage(frames.STAGE, rows, tmp_path, FRAME_SETTINGS, jobs=1)
    folder = tmp_path / "frames"
    log.check(folder / "settings.json", folder_too=True)
    log.check(folder / "failures.csv", folder_too=True)
    out = Work(tmp_path).output("frames", "x", ".npz")
    log.check(out, folder_too=False)
    assert provenance.read_source_record(out)["source"]["path"] == str((media_dir / "a.mp4").resolve())
    log.check(durable.atomic_write(tmp_path / "plain.bin", lambda f: f.write(b"1")), folder_too=False)


def test_case10_cache_and_run_writes_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    from classify import runs
    from extract import durable
    from features import cache

    log = _SyncLog(monkeypatch)
    writer = cache.ShardWriter(tmp_path, "rgb", {"backbone": "x"})
    writer.write("v1", np.ones((2, 3), np.float32))
    writer.missing("v2", "no audio")
    h5 = writer.consolidate(["v1", "v2"])
    log.check(writer.dir / "attrs.json", folder_too=True)
    log.check(writer.dir / f"{file_key('v1')}.npy", folder_too=False)
    log.check(writer.dir / f"{file_key('v2')}.missing.json", folder_too=False)
    log.check(h5, folder_too=True)
    runs.write_json(tmp_path / "settings.json", {"a": 1})
    log.check(tmp_path / "settings.json", folder_too=False)
    with durable.atomic_dir(tmp_path / "runs" / "r") as tmp:
        (tmp / "metrics.json").write_text("{}")
    inner = [e for e in log.events if e[0] == "fsync" and e[1].endswith("/metrics.json")]
    assert inner, "files of a run folder must be synced before it is published"
    log.check(tmp_path / "runs" / "r", folder_too=True)


# ----------------------------------------------------------------------------- case 2, stage side


def test_case2_nan_audio_fails_that_video_in_the_audio_stage(media_dir, tmp_path):
    rows = [_video("nan", tv.make_nan_audio_mkv(tmp_path / "nan.mkv")), _video("ok", media_dir / "a.mp4")]
    assert stage.run_stage(frames.STAGE, rows, tmp_path, FRAME_SETTINGS, jobs=1).done == 2
    s = stage.run_stage(audio.STAGE, rows, tmp_path, AUDIO_SETTINGS, jobs=1)
    assert (s.done, s.failed, s.exit_code) == (1, 1, cli.EXIT_SOME_FAILED)
    assert "non-finite log-mel" in records.read_failures(tmp_path, "audio")["nan"]
    assert not Work(tmp_path).output("audio", "nan", ".npz").exists()
    assert np.isfinite(audio.load(tmp_path, "ok")).all()


# ----------------------------------------------------------------------------- probing through PyAV


def test_probe_reads_the_container_itself_not_the_ffmpeg_binary(media_dir, tmp_path, monkeypatch):
    rotated = tv.make_video(tmp_path / "r.mp4", rotate=90)
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\necho 'Input #0, garbage' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("DMVER_FFMPEG", str(fake))
    media.ffmpeg_exe.cache_clear()
    try:
        info = media.probe(rotated)
    finally:
        monkeypatch.delenv("DMVER_FFMPEG")
        media.ffmpeg_exe.cache_clear()
    assert (info.width, info.height, info.rotation, info.frames, info.fps) == (64, 96, 270, 30, 30.0)
    assert info.has_audio and (info.audio_rate, info.audio_channels) == (tv.AUDIO_RATE, 1)
    for special in ("/dev/zero", tmp_path):
        with pytest.raises(media.MediaError, match="not a regular file"):
            media.probe(special)


def test_decoding_command_lines_come_from_ffmpeg_python():
    cmd = media.frames_command("a b/é.mp4", "scale=40:32:flags=bilinear,crop=32:32:4:0", [0, 1, 2, 7],
                               start=1.5, end=3.0)
    assert cmd[1:5] == ["-hide_banner", "-nostdin", "-loglevel", "error"]
    graph = cmd[cmd.index("-filter_complex") + 1]
    assert graph.startswith("[0:v:0]select=between(n\\,0\\,2)+eq(n\\,7)")
    assert "scale=40:32:flags=bilinear" in graph and "crop=32:32:4:0" in graph
    assert cmd[cmd.index("-ss") + 1] == "1.500000" and cmd[cmd.index("-t") + 1] == "1.500000"
    assert cmd[cmd.index("-i") + 1] == "a b/é.mp4" and cmd[-1] == "pipe:1"
    a = media.audio_command("x.mkv", 2, 44100)
    assert a[a.index("-map") + 1] == "0:a:0" and a[a.index("-acodec") + 1] == "pcm_f32le"


@pytest.mark.slow
def test_bench_reliability_measures_both_costs(media_dir, tmp_path):
    m = manifest.write_manifest(tmp_path / "m.csv", [_video("a", media_dir / "a.mp4"), _video("b", media_dir / "b.mp4")])
    from benchmarks import reliability as bench_reliability

    assert bench_reliability.main(["--manifest", str(m), "--out", str(tmp_path / "out"), "--repeats", "1",
                                   "--records", "40"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    d = report["durable_writes"]
    assert d["videos"] == 2 and len(d["seconds"]["fsync"]) == len(d["seconds"]["no fsync"]) == 1
    assert d["median_fsync"] > 0 and d["median_no_fsync"] > 0
    assert report["provenance"]["records"] == 40 and report["provenance"]["best_seconds"] > 0
    assert not (tmp_path / "out" / "work").exists()
