"""The results table's rows beyond the published three, derived from the modality entries.

The derivation reads only `name`, `label`, `column` and `in_all`, so stand-in entries test it
without registering anything."""
from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import pytest

from classify import published, rows, table
from classify.rows import ALL_MODALITIES, SEED_ROWS, Row


def entry(name, label, column, in_all=False):
    return SimpleNamespace(name=name, label=label, column=column, in_all=in_all)


ENTRIES = [
    entry("rgb", "I3D RGB", "RGB", True), entry("flow", "I3D flow", "Flow/Audio", True),
    entry("audio", "VGGish", "Flow/Audio", True), entry("rgb2d", "ResNet-18", "RGB"),
    entry("text", "Text", "Text", True), entry("clip", "CLIP", "RGB"),
    entry("face", "Face", "Face", True),  # what a plugin adds
]


def fake_caches(work, names):
    (work / "features").mkdir(parents=True, exist_ok=True)
    for m in names:
        (work / "features" / f"{m}.h5").write_bytes(b"")  # cache.exists looks for the file only


def test_one_row_per_modality_the_seed_rows_do_not_use_then_all_modalities():
    derived = rows.extra_rows(ENTRIES)
    assert derived == (
        Row("Text", {"Text": ("text",)}, published=False),
        Row("CLIP", {"RGB": ("clip",)}, published=False),
        Row("Face", {"Face": ("face",)}, published=False),
        Row(ALL_MODALITIES, {"Joint": ("rgb", "flow", "audio", "text", "face")}, published=False),
    )
    assert not {r.name for r in derived} & {r.name for r in SEED_ROWS}


def test_all_modalities_fuses_the_in_all_modalities_that_have_a_cache():
    cached = {"rgb", "text", "face", "clip"}
    (joint,) = [r for r in rows.extra_rows(ENTRIES, cached.__contains__) if r.name == ALL_MODALITIES]
    assert joint.cells == {"Joint": ("rgb", "text", "face")}  # clip is not in_all, flow/audio have no cache
    # fewer than two cached: it names them all, and its cell says which caches are missing
    (joint,) = [r for r in rows.extra_rows(ENTRIES, {"rgb"}.__contains__) if r.name == ALL_MODALITIES]
    assert joint.cells == {"Joint": ("rgb", "flow", "audio", "text", "face")}
    # fewer than two in_all modalities at all: no such row
    assert [r.name for r in rows.extra_rows([entry("rgb", "I3D RGB", "RGB", True), entry("s3d", "S3D", "RGB")])] \
        == ["S3D"]


def test_auto_shows_the_rows_whose_caches_exist(tmp_path):
    fake_caches(tmp_path, ["rgb", "flow", "audio", "rgb2d", "clip"])
    # rgb + flow + audio alone is the Audio+I3D joint: no "All modalities" row for it
    assert [r.name for r in rows.select_extra_rows(tmp_path, "auto", ENTRIES)] == ["CLIP"]
    fake_caches(tmp_path, ["face"])
    shown = rows.select_extra_rows(tmp_path, "auto", ENTRIES)
    assert [r.name for r in shown] == ["CLIP", "Face", ALL_MODALITIES]
    assert shown[-1].cells == {"Joint": ("rgb", "flow", "audio", "face")}
    assert rows.select_extra_rows(tmp_path, "none", ENTRIES) == ()
    assert not rows.select_extra_rows(tmp_path / "empty", "auto", ENTRIES)


def test_named_rows_are_shown_without_their_caches(tmp_path):
    named = rows.select_extra_rows(tmp_path, "face, text", ENTRIES)
    assert [(r.name, r.cells) for r in named] == [("Face", {"Face": ("face",)}), ("Text", {"Text": ("text",)})]
    with pytest.raises(ValueError, match=r"unknown extra row\(s\) \['hubert'\]; known: Text, CLIP, Face, All modalities"):
        rows.select_extra_rows(tmp_path, "HuBERT", ENTRIES)


def test_the_command_derives_its_rows_from_the_registry(monkeypatch):
    """`classify.table` takes its extra rows from `features.modalities.all_modalities()`."""
    monkeypatch.setattr(table.registry, "all_modalities", lambda: ENTRIES)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        table.main(["--help"])
    assert "Text, CLIP, Face, All modalities" in " ".join(out.getvalue().split())


def test_published_numbers_name_their_source_in_words():
    assert published.SOURCE == "the DMVER dataset README (its results table)"
    assert published.accuracy("other") is None
    assert published.accuracy("dmver")["I3D"] == {"RGB": 54.02, "Flow/Audio": 59.03, "Joint": 61.67}
    assert published.accuracy("iemocap")["ConvNet+LSTM"] == {"RGB": 50.77}  # "-" in the table: absent
    assert published.accuracy("music-video")["Audio+I3D"]["Joint"] == 58.38


def test_joint_head_rows_follow_all_modalities(tmp_path):
    """`--joint`: one row per joint rule over the in_all modalities with a cache, after the other
    extra rows and whatever `--extra-rows` says; none with fewer than two such caches."""
    fake_caches(tmp_path, ["rgb", "flow", "audio", "rgb2d", "clip"])
    got = rows.select_extra_rows(tmp_path, "none", ENTRIES, ("early", "xattn"))
    assert got == (Row("All modalities, early", {"Joint": ("rgb", "flow", "audio")}, published=False, rule="early"),
                   Row("All modalities, xattn", {"Joint": ("rgb", "flow", "audio")}, published=False, rule="xattn"))
    assert [r.name for r in rows.select_extra_rows(tmp_path, "auto", ENTRIES, ("tfn",))] == ["CLIP", "All modalities, tfn"]
    assert rows.select_extra_rows(tmp_path, "auto", ENTRIES) == (Row("CLIP", {"RGB": ("clip",)}, published=False),)
    lonely = tmp_path / "one"
    fake_caches(lonely, ["rgb", "clip"])
    assert rows.joint_rule_rows(ENTRIES, lambda m: cache_exists(lonely, m), ("early",)) == ()
    assert table.parse_joint("none") == () and table.parse_joint("tfn, early") == ("tfn", "early")
    with pytest.raises(ValueError, match="lmf"):
        table.parse_joint("early,lmf")


def cache_exists(work, m):
    return (work / "features" / f"{m}.h5").is_file()
