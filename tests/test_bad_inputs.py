"""Hostile and broken inputs: formula cells, invisible captions, control characters in ids,
manifests that are not UTF-8, long or comma-split captions, bad clip bounds, empty manifests."""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from classify import export
from classify import predict as predict_cli
from extract import csvcells, frames, manifest, records
from extract.manifest import ManifestError, Video, read_manifest, write_manifest
from features import backbones, text
from features import extract as features_cli
from features import modalities

ROOT = Path(__file__).resolve().parents[1]
FORMULAS = ['=HYPERLINK("http://evil.example","click")', "+1", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1"]
HEADER = "id,path,label,split,text\n"


def _cells(data: str | Path) -> list[list[str]]:
    """The cells of CSV text or of a file (read without newline translation, as csv wants)."""
    if isinstance(data, Path):
        data = data.read_bytes().decode("utf-8")
    return list(csv.reader(io.StringIO(data, newline="")))


def _write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- formula cells


def test_manifest_captions_and_paths_are_guarded_ids_are_not_and_everything_reads_back(tmp_path):
    captions = [*FORMULAS, "'=already quoted", "''+two", "'plain apostrophe", "fine", "-", "one\rtwo", "a\r\nb"]
    videos = [Video(id=f"-{i}", path=str(tmp_path / f"=clip{i}.mp4"), label="pos", split="train", text=c)
              for i, c in enumerate(captions)]
    path = write_manifest(tmp_path / "m.csv", videos)
    rows = _cells(path)[1:]
    for row, c in zip(rows, captions):
        cell = row[4]
        assert cell[:1] not in csvcells.TRIGGERS, cell  # a spreadsheet reads no formula here
        assert cell == ("'" + c if csvcells.needs_guard(c) else c)
        assert row[1].startswith("'=clip")
    assert [r[0] for r in rows] == [v.id for v in videos]  # ids are keys: written as they are
    back = read_manifest(path)
    assert [v.text for v in back] == captions
    assert [v.path for v in back] == [v.path for v in videos]


def test_guard_round_trips_every_string():
    for s in ["", "a", "'", "''", "'a", "'=", "=", "''=x", "'''-", "@", "x=1", "\t", " =x"]:
        assert csvcells.unguard(csvcells.guard(s)) == s
        assert csvcells.guard(s)[:1] not in csvcells.TRIGGERS


def test_failures_and_warnings_csv_guard_free_text_and_read_it_back(tmp_path):
    work = tmp_path / "w"
    (work / "frames").mkdir(parents=True)
    failures = [{"id": "-1", "path": "=p.mp4", "stage": "frames", "reason": FORMULAS[0]}]
    warnings = [{"id": "@v", "path": "+p.mp4", "stage": "frames", "warning": "-2+3 frames fewer"}]
    records.write_failures(work, "frames", failures)
    records.write_warnings(work, "frames", warnings)
    f_rows = _cells(work / "frames" / "failures.csv")
    w_rows = _cells(work / "frames" / "warnings.csv")
    assert f_rows[1] == ["-1", "'=p.mp4", "frames", "'" + FORMULAS[0]]
    assert w_rows[1] == ["@v", "'+p.mp4", "frames", "'-2+3 frames fewer"]
    assert records.read_failures(work, "frames") == {"-1": FORMULAS[0]}
    assert records.read_warnings(work, "frames") == warnings
    # a run keeps earlier warnings by reading and writing them again: no apostrophes pile up
    before = (work / "frames" / "warnings.csv").read_bytes()
    records.write_warnings(work, "frames", records.read_warnings(work, "frames"))
    assert (work / "frames" / "warnings.csv").read_bytes() == before


def test_predictions_csv_guards_the_missing_reasons():
    bundle = {"modalities": ["text"], "class_names": ["neg", "pos"],
              "features": {"text": {"cache": {"weights": "pretrained"}}}}
    fused = np.full((1, 2), np.nan)
    P = np.full((1, 1, 2), np.nan)
    out = predict_cli.predictions_csv(bundle, ["=id"], fused, P, {"=id": ["=HYPERLINK(\"x\")"]})
    rows = _cells(out)
    assert rows[1][0] == "=id"  # the id is a key, as it is
    assert rows[1][-1] == "'=HYPERLINK(\"x\")"
    assert "\r" not in out


# ----------------------------------------------------------------------------- invisible captions

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\x00", "\x01\x07\x1b\x7f", "\x85\x9f", "\u200e\u200f",
             "\u202a\u202b\u202c\u202d\u202e", "\u2066\u2067\u2068\u2069", "\ufeff", "\u00ad",
             "\U000e0020\U000e0041\U000e007f", "\ufe0f\ufe0e", "\U000e0100"]


@pytest.mark.parametrize("caption", INVISIBLE + ["".join(INVISIBLE) + " \t\n"], ids=repr)
@pytest.mark.parametrize("emoji", text.EMOJI_CHOICES)
def test_a_caption_of_invisible_characters_is_no_caption(caption, emoji):
    assert text.clean_caption(caption, emoji=emoji) == ""


def test_invisible_characters_inside_a_caption_are_removed():
    assert text.clean_caption("so\u200b happy\u2060 to\u00adday\ufeff \u202eyes\u202c\x00!") == "so happy today yes!"
    assert text.clean_caption("line\none\ttab") == "line one tab"  # whitespace controls stay word breaks
    # kept emoji keep their joiners and variation selectors; stray ones go
    assert text.clean_caption("\u200d👨\u200d👩 ok\u200d\ufe0f", emoji="keep") == "👨\u200d👩 ok"


def test_the_text_modality_records_an_invisible_caption_as_missing(tmp_path):
    source = modalities.get("text").source
    options = {o.name: o.default for o in source.options}
    video = Video(id="v", path="v.mp4", label="pos", split="train", text="\u200b\u200d\ufeff\u2066")
    got = source.load(tmp_path, video, options)
    assert isinstance(got, modalities.Missing), got


# ----------------------------------------------------------------------------- ids with control characters


@pytest.mark.parametrize("bad", ["\x00", "\t", "\n", "\r", "\x7f", "\x85", "\x1b"], ids=repr)
def test_ids_with_control_characters_are_refused_naming_the_row(tmp_path, bad):
    vid = f"clip{bad}1"
    path = _write(tmp_path / "m.csv", HEADER + "ok,a.mp4,pos,train,\n" + f'"{vid}",b.mp4,pos,train,\n')
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert "row 2" in str(err.value) and repr(vid) in str(err.value)


# ----------------------------------------------------------------------------- reading manifests


def test_a_manifest_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = _write(tmp_path / "latin1.csv", (HEADER + "a,a.mp4,pos,train,ok\nb,b.mp4,pos,train,caf").encode()
                  + b"\xe9\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert str(path) in str(err.value) and "line 3" in str(err.value) and "UTF-8" in str(err.value)


def test_a_caption_over_the_csv_field_limit_is_read(tmp_path):
    csv.field_size_limit(131072)  # the csv module's default, whatever ran before
    long_caption = "happy " * 40_000  # 240 KB
    path = _write(tmp_path / "m.csv", HEADER + f'a,a.mp4,pos,train,"{long_caption}"\n')
    assert read_manifest(path)[0].text == long_caption


def test_an_unquoted_comma_in_a_caption_keeps_the_whole_caption_with_a_warning(tmp_path, caplog):
    path = _write(tmp_path / "m.csv", "id,path,label,split,text,group\n"
                  "a,a.mp4,pos,train,ok,pub1\n"
                  "b,b.mp4,neg,train,wait, what, really,pub2\n")
    with caplog.at_level(logging.WARNING):
        videos = read_manifest(path)
    assert [(v.text, v.group) for v in videos] == [("ok", "pub1"), ("wait, what, really", "pub2")]
    assert any("line 3" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


def test_extra_cells_without_a_text_column_are_an_error_naming_the_line(tmp_path):
    path = _write(tmp_path / "m.csv", "id,path,label,split\na,a.mp4,pos,train\nb,b,c.mp4,pos,train\n")
    with pytest.raises(ManifestError, match="line 3"):
        read_manifest(path)


@pytest.mark.parametrize("start,end", [("nan", "2"), ("0", "inf"), ("-5", "2"), ("3", "2"), ("2", "2"),
                                       ("", "0"), ("", "-1"), ("inf", "")])
def test_bad_clip_bounds_are_refused_naming_the_row(tmp_path, start, end):
    path = _write(tmp_path / "m.csv", "id,path,label,split,start,end\n"
                  "ok,a.mp4,pos,train,0,1\n" f"bad,b.mp4,pos,train,{start},{end}\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert "row 2 ('bad')" in str(err.value)


def test_a_header_only_manifest_is_refused(tmp_path, capsys):
    path = _write(tmp_path / "empty.csv", HEADER)
    with pytest.raises(ManifestError, match="has no videos"):
        read_manifest(path)
    assert manifest.main(["check", str(path)]) == manifest.EXIT_ERRORS
    assert "has no videos" in capsys.readouterr().out


def test_stage_commands_on_a_header_only_manifest_exit_2_with_one_line(tmp_path, capsys):
    path = _write(tmp_path / "empty.csv", HEADER)
    code = frames.main(["--manifest", str(path), "--work", str(tmp_path / "w"), "--jobs", "1"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == f"error: {path} has no videos" and "done" not in out


def test_feature_stage_on_a_header_only_manifest_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(features_cli, "extract_features", lambda *a, **k: calls.append(a) or {})
    path = _write(tmp_path / "empty.csv", HEADER)
    code = features_cli.main(["--modality", "text", "--manifest", str(path), "--work", str(tmp_path / "w")])
    assert code == 2 and not calls
    assert capsys.readouterr().err.strip() == f"error: {path} has no videos"


def test_predict_on_a_header_only_manifest_exits_2_without_loading_a_backbone(tmp_path, capsys, monkeypatch):
    loaded = []

    def load_backbone(*args, **kwargs):
        loaded.append(args)
        raise RuntimeError("a backbone was loaded")

    monkeypatch.setattr(backbones, "load_backbone", load_backbone)
    model = tmp_path / "model"
    model.mkdir()
    (model / "bundle.json").write_text(json.dumps({
        "format": export.BUNDLE_FORMAT, "stages": {}, "modalities": ["text"], "class_names": ["neg", "pos"],
        "features": {"text": {"cache": {"weights": "random", "sha256": "0" * 64, "checkpoint": "x"}}}}))
    path = _write(tmp_path / "empty.csv", "id,path,label,split\n")
    code = predict_cli.main(["--model", str(model), "--manifest", str(path), "--work", str(tmp_path / "w")])
    assert code == 2 and not loaded
    assert capsys.readouterr().err.strip() == f"error: {path} has no videos"


# ----------------------------------------------------------------------------- line ends, .gitignore


def test_every_csv_writer_ends_lines_with_lf(tmp_path):
    path = write_manifest(tmp_path / "m.csv", [Video(id="a", path="a.mp4", label="pos", split="train", text="hi")])
    assert b"\r" not in path.read_bytes() and path.read_bytes().count(b"\n") == 2
    work = tmp_path / "w"
    (work / "frames").mkdir(parents=True)
    records.write_failures(work, "frames", [{"id": "a", "path": "a.mp4", "stage": "frames", "reason": "bad"}])
    records.write_warnings(work, "frames", [{"id": "a", "path": "a.mp4", "stage": "frames", "warning": "short"}])
    for name in ("failures.csv", "warnings.csv"):
        assert b"\r" not in (work / "frames" / name).read_bytes(), name


def test_gitignore_keeps_models_and_work_out_of_the_repository():
    lines = {line.strip().lstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert {"models/", "work/"} <= lines
