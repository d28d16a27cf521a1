"""Manifest builders, splitting and validation: what every stage reads."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from extract import manifest
from extract.manifest import ManifestError, Video


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_builder_reads_classes_captions_and_unique_ids(tmp_path):
    for cls in ("negative", "neutral", "positive"):
        for i in range(5):
            _touch(tmp_path / "ds" / cls / f"clip{i}.mp4")
    (tmp_path / "ds" / "positive" / "clip0.txt").write_text("so happy today\n", encoding="utf-8")
    _touch(tmp_path / "ds" / "positive" / "notes.md")  # not a video
    videos = manifest.from_folder(tmp_path / "ds")
    assert len(videos) == 15
    assert Counter(v.label for v in videos) == {"negative": 5, "neutral": 5, "positive": 5}
    by_id = {v.id: v for v in videos}
    assert by_id["positive/clip0"].text == "so happy today"
    assert by_id["negative/clip0"].text is None  # same file name in two classes, distinct ids
    assert all(Path(v.path).is_file() for v in videos)


def test_folder_builder_keeps_the_source_split(tmp_path):
    for split in ("train", "val", "test"):
        for cls in ("a", "b"):
            _touch(tmp_path / split / cls / f"{split}_{cls}.mp4")
    videos = manifest.assign_splits(manifest.from_folder(tmp_path), seed=3)
    assert {(v.id.split("/")[0], v.split) for v in videos} == {("train", "train"), ("val", "val"), ("test", "test")}


def test_list_builder_maps_published_labels(tmp_path):
    lst = tmp_path / "lists" / "all.txt"
    lst.parent.mkdir()
    lst.write_text("videos/a.mp4 , -1\nvideos/b.mp4 , 0\n\nvideos/c d.mp4 , 1\n", encoding="utf-8")
    videos = manifest.from_list(lst)
    assert [(v.id, v.label) for v in videos] == [("videos/a", "negative"), ("videos/b", "neutral"), ("videos/c d", "positive")]
    assert videos[2].path == str(lst.parent / "videos" / "c d.mp4")
    root = tmp_path / "elsewhere"
    assert manifest.from_list(lst, root=root)[0].path == str(root / "videos" / "a.mp4")


def test_list_builder_names_bad_lines(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("a.mp4 , 0\nb.mp4 , 2\nno label here\n", encoding="utf-8")
    with pytest.raises(ManifestError) as err:
        manifest.from_list(lst)
    assert "line 2" in str(err.value) and "line 3" in str(err.value)


def _fake_iemocap(root: Path) -> None:
    dialogs = {
        "Session1": {"Ses01F_impro01": [("Ses01F_impro01_F000", "neu", 6.29, 8.24), ("Ses01F_impro01_M001", "exc", 9.0, 11.5),
                                        ("Ses01F_impro01_F002", "fru", 12.0, 13.0), ("Ses01F_impro01_M003", "ang", 13.5, 15.0)],
                     "Ses01F_script01_1": [("Ses01F_script01_1_F000", "sad", 1.0, 3.0), ("Ses01F_script01_1_M001", "hap", 3.5, 4.0)]},
        "Session2": {"Ses02M_impro02": [("Ses02M_impro02_F000", "hap", 0.5, 2.5), ("Ses02M_impro02_M001", "xxx", 3.0, 4.0),
                                        ("Ses02M_impro02_F002", "sad", 4.5, 6.0)]},
    }
    for session, ds in dialogs.items():
        for dialog, utterances in ds.items():
            _touch(root / session / "dialog" / "avi" / "DivX" / f"{dialog}.avi")
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for utt, label, start, end in utterances:
                lines += [f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]",
                          f"C-E1:\t{label.title()};\t()", "A-E1:\tval 3; act 2; dom  3;\t()", ""]
            evaluation = root / session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            evaluation.parent.mkdir(parents=True, exist_ok=True)
            evaluation.write_text("\n".join(lines), encoding="utf-8")


def test_iemocap_builder_reads_utterance_clips(tmp_path):
    _fake_iemocap(tmp_path)
    videos = manifest.from_iemocap(tmp_path)
    assert {v.id: v.label for v in videos} == {
        "Ses01F_impro01_F000": "neu", "Ses01F_impro01_M003": "ang", "Ses01F_script01_1_F000": "sad",
        "Ses01F_script01_1_M001": "hap", "Ses02M_impro02_F000": "hap", "Ses02M_impro02_F002": "sad"}
    first = next(v for v in videos if v.id == "Ses01F_impro01_F000")
    assert (first.start, first.end) == (6.29, 8.24)
    assert first.path.endswith("Session1/dialog/avi/DivX/Ses01F_impro01.avi")


def test_iemocap_merge_exc_and_impro_only(tmp_path):
    _fake_iemocap(tmp_path)
    videos = manifest.from_iemocap(tmp_path, merge_exc=True, impro_only=True)
    labels = {v.id: v.label for v in videos}
    assert labels["Ses01F_impro01_M001"] == "hap"
    assert not any("script" in v for v in labels)
    assert set(labels.values()) <= set(manifest.IEMOCAP_CLASSES)


def _videos(counts: dict[str, int]) -> list[Video]:
    return [Video(id=f"{c}_{i}", path=f"/v/{c}_{i}.mp4", label=c) for c, n in counts.items() for i in range(n)]


def test_split_is_per_class_60_20_20_and_seeded():
    videos = _videos({"negative": 50, "neutral": 40, "positive": 45})
    a = manifest.assign_splits(videos, seed=7)
    assert a == manifest.assign_splits(videos, seed=7)
    assert a != manifest.assign_splits(videos, seed=8)
    for cls, n in {"negative": 50, "neutral": 40, "positive": 45}.items():
        got = Counter(v.split for v in a if v.label == cls)
        assert got["train"] == pytest.approx(0.6 * n, abs=2)
        assert got["val"] == pytest.approx(0.2 * n, abs=1)
        assert got["test"] == pytest.approx(0.2 * n, abs=1)


def test_class_too_small_to_split_names_it():
    with pytest.raises(ManifestError, match=r"class 'rare' has 2 video\(s\) \(rows \[11, 12\]\)"):
        manifest.assign_splits(_videos({"common": 10, "rare": 2}))


def test_duplicate_ids_and_empty_labels_name_their_rows(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,path,label,split\na,a.mp4,x,train\nb,b.mp4,,val\na,c.mp4,y,test\n", encoding="utf-8")
    with pytest.raises(ManifestError) as err:
        manifest.read_manifest(path)
    message = str(err.value)
    assert "row 2 ('b'): empty label" in message
    assert "row 3: duplicate id 'a' (first at row 1)" in message


def test_round_trip_keeps_paths_relative_and_optional_columns(tmp_path):
    (tmp_path / "vids").mkdir()
    videos = [Video(id="ü 1", path=str(tmp_path / "vids" / "a b.mp4"), label="pos", split="train", text="hi, there"),
              Video(id="x/../y", path=str(tmp_path / "vids" / "c.mp4"), label="neg", split="test", start=1.5, end=3.25)]
    path = manifest.write_manifest(tmp_path / "m.csv", videos)
    assert "vids/a b.mp4" in path.read_text(encoding="utf-8")
    assert manifest.read_manifest(path) == videos
    assert manifest.class_names(videos) == ["neg", "pos"]


def test_missing_file_is_a_warning_not_an_error(tmp_path, caplog):
    for i in range(5):
        _touch(tmp_path / "ds" / "a" / f"{i}.mp4")
        _touch(tmp_path / "ds" / "b" / f"{i}.mp4")
    (tmp_path / "ds" / "a" / "0.mp4").unlink()
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"ds/{c}/{i}.mp4 , {l}\n" for c, l in (("a", -1), ("b", 1)) for i in range(5)), encoding="utf-8")
    out = tmp_path / "m.csv"
    with caplog.at_level(logging.WARNING):
        assert manifest.main(["list", str(lst), "--out", str(out)]) == 0
    assert "video file not found" in caplog.text and "ds/a/0" in caplog.text
    assert len(manifest.read_manifest(out)) == 10


def test_cli_reports_a_clear_error(tmp_path, capsys):
    assert manifest.main(["folder", str(tmp_path / "nope"), "--out", str(tmp_path / "m.csv")]) == 2
    assert "not a folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- groups


def _publisher_folder(root: Path, publishers: int = 40, seed: int = 0) -> None:
    """DMVER-style names `<publisher>_<n>.mp4`; a publisher posts 1 to 5 videos of mixed classes."""
    import random

    rng = random.Random(seed)
    for p in range(publishers):
        for n in range(rng.randint(1, 5)):
            _touch(root / rng.choice(["negative", "neutral", "positive"]) / f"pub{p:03d}_{n}.mp4")


def _assert_no_group_in_two_splits(videos):
    splits = {}
    for v in videos:
        assert v.group, v
        splits.setdefault(v.group, set()).add(v.split)
    assert all(len(s) == 1 for s in splits.values()), {g: s for g, s in splits.items() if len(s) > 1}
    assert {v.split for v in videos} == {"train", "val", "test"}


def test_folder_builder_group_regex_keeps_groups_in_one_split(tmp_path):
    _publisher_folder(tmp_path / "ds")
    out = tmp_path / "m.csv"
    assert manifest.main(["folder", str(tmp_path / "ds"), "--group-regex", r"^(pub\d+)_", "--out", str(out)]) == 0
    videos = manifest.read_manifest(out)
    assert "group" in out.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert {v.group for v in videos} == {f"pub{p:03d}" for p in range(40)}
    assert all(Path(v.path).name.startswith(v.group + "_") for v in videos)
    _assert_no_group_in_two_splits(videos)


def test_list_builder_group_regex_and_its_errors(tmp_path):
    lst = tmp_path / "all.txt"
    lst.write_text("".join(f"v/u{p}-{n}.mp4 , {(p + n) % 3 - 1}\n" for p in range(30) for n in range(3)), encoding="utf-8")
    videos = manifest.assign_splits(manifest.from_list(lst, group_regex=r"u(\d+)-"), seed=1)
    assert len({v.group for v in videos}) == 30
    _assert_no_group_in_two_splits(videos)
    with pytest.raises(ManifestError, match="no capture group"):
        manifest.from_list(lst, group_regex=r"u\d+")
    lst.write_text("v/u1-0.mp4 , 0\nv/odd.mp4 , 1\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"no group in 1 file name\(s\), e.g. \['odd.mp4'\]"):
        manifest.from_list(lst, group_regex=r"u(\d+)-")


def _fake_iemocap_sessions(root: Path) -> None:
    """Five sessions, four classes in each: what the group split deals out whole."""
    for s in range(1, 6):
        dialog = f"Ses0{s}F_impro01"
        _touch(root / f"Session{s}" / "dialog" / "avi" / "DivX" / f"{dialog}.avi")
        lines = [f"[{k:.4f} - {k + 1:.4f}]\t{dialog}_F{k:03d}\t{lab}\t[2.5000, 2.5000, 2.5000]"
                 for k, lab in enumerate(["neu", "hap", "sad", "ang"] * 3)]
        evaluation = root / f"Session{s}" / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        evaluation.parent.mkdir(parents=True, exist_ok=True)
        evaluation.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_iemocap_groups_are_sessions_and_the_split_is_session_wise(tmp_path):
    _fake_iemocap(tmp_path / "small")
    assert {v.group for v in manifest.from_iemocap(tmp_path / "small")} == {"Ses01", "Ses02"}
    with pytest.raises(ManifestError, match="cannot split by group: 2 group"):
        manifest.assign_splits(manifest.from_iemocap(tmp_path / "small"))
    _fake_iemocap_sessions(tmp_path / "five")
    out = tmp_path / "m.csv"
    assert manifest.main(["iemocap", str(tmp_path / "five"), "--out", str(out)]) == 0
    videos = manifest.read_manifest(out)
    _assert_no_group_in_two_splits(videos)
    sessions = {s: {v.group for v in videos if v.split == s} for s in ("train", "val", "test")}
    assert [len(sessions[s]) for s in ("train", "val", "test")] == [3, 1, 1]


def test_group_split_is_seeded_and_balanced():
    import random

    rng = random.Random(5)
    videos = [Video(id=f"g{g}_{i}", path=f"/v/g{g}_{i}.mp4", label=rng.choice("abc"), group=f"g{g}")
              for g in range(300) for i in range(rng.randint(1, 4))]
    a = manifest.assign_splits(videos, seed=3)
    assert a == manifest.assign_splits(videos, seed=3)
    assert a != manifest.assign_splits(videos, seed=4)
    _assert_no_group_in_two_splits(a)
    for cls in "abc":
        n = sum(v.label == cls for v in a)
        got = Counter(v.split for v in a if v.label == cls)
        assert got["train"] / n == pytest.approx(0.6, abs=0.05)
        assert got["val"] / n == pytest.approx(0.2, abs=0.05) and got["test"] / n == pytest.approx(0.2, abs=0.05)


def test_given_splits_that_leak_groups_are_kept_with_a_warning(caplog):
    videos = [Video(id=f"v{i}", path=f"/v/{i}.mp4", label="ab"[i % 2], split=("train", "val", "test")[i % 3],
                    group="alice" if i < 3 else f"solo{i}") for i in range(12)]
    with caplog.at_level(logging.WARNING):
        kept = manifest.assign_splits(videos)
    assert kept == videos
    assert "1 group(s) in two or more splits: 'alice' (train/val/test)" in caplog.text
    assert "solo" not in caplog.text


# ----------------------------------------------------------------------------- check


def test_check_reports_a_good_manifest(tmp_path, capsys):
    _publisher_folder(tmp_path / "ds")
    (tmp_path / "ds" / "negative" / "pub000_0.txt").write_text("a caption", encoding="utf-8")
    out = tmp_path / "m.csv"
    assert manifest.main(["folder", str(tmp_path / "ds"), "--group-regex", r"^(pub\d+)_", "--out", str(out)]) == 0
    capsys.readouterr()
    assert manifest.main(["check", str(out)]) == 0
    text = capsys.readouterr().out
    videos = manifest.read_manifest(out)
    assert "| | train | val | test | total |" in text
    for cls in ("negative", "neutral", "positive"):
        row = [sum(v.label == cls and v.split == s for v in videos) for s in ("train", "val", "test")]
        assert f"| {cls} | {' | '.join(map(str, row))} | {sum(row)} |" in text
    n_groups = [len({v.group for v in videos if v.split == s}) for s in ("train", "val", "test")]
    assert f"| groups | {' | '.join(map(str, n_groups))} | 40 |" in text
    assert "groups in two or more splits: none" in text and text.rstrip().endswith("ok")
    assert "| captions |" in text and "| missing files | 0 | 0 | 0 | 0 |" in text


def test_check_exit_codes_on_bad_manifests(tmp_path, capsys):
    _touch(tmp_path / "a.mp4")
    good = "id,path,label,split,group\n"
    rows = [f"v{i},a.mp4,{'xy'[i % 2]},{('train', 'val', 'test')[i % 3]},g{i}\n" for i in range(6)]
    leak = tmp_path / "leak.csv"  # g0 in train and test, one file missing
    leak.write_text(good + "".join(rows) + "v6,gone.mp4,x,test,g0\n", encoding="utf-8")
    assert manifest.main(["check", str(leak)]) == 1
    text = capsys.readouterr().out
    assert "warning: 1 group(s) in two or more splits: 'g0' (train/test)" in text
    assert "1 video file(s) not found, e.g. ['v6']" in text and "| missing files | 0 | 0 | 1 | 1 |" in text
    bad = tmp_path / "bad.csv"  # a duplicate id and an unknown split: what every stage refuses
    bad.write_text(good + "".join(rows) + "v1,a.mp4,x,dev,g9\n", encoding="utf-8")
    assert manifest.main(["check", str(bad)]) == 2
    text = capsys.readouterr().out
    assert "duplicate id 'v1'" in text and "split 'dev' is not one of" in text and "(other)" in text
    with pytest.raises(ManifestError):
        manifest.read_manifest(bad)  # the same validation
    assert manifest.main(["check", str(tmp_path / "nope.csv")]) == 2
    assert "manifest not found" in capsys.readouterr().err
