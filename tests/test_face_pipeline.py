"""Face and eGeMAPS through the whole toolkit: the sample's videos (some carry a real face) through
the frames, audio and faces stages, the face (real weights), egemaps and rgb features, the table's
extra rows, late fusion, a model bundle, prediction on new videos (which runs the faces stage and
both modalities again) and the report's face column, checked in a real browser when there is one."""
from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil

import pytest

from classify import export as export_cli
from classify import predict as predict_cli
from classify import report
from classify import table as tbl
from extract import faces, sample
from extract.manifest import write_manifest
from features import cache
from features.extract import extract_features
from tests import facework
from tests.cli import quiet
from tests.workdirs import STAGED_FRAMES, sample_with_frames_and_audio

MODALITIES = ["rgb", "face", "egemaps"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, face_weights):
    root = tmp_path_factory.mktemp("facepipe")
    weights = face_weights
    manifest, work, videos = sample_with_frames_and_audio(root)
    data = manifest.parent
    facework.run_faces(videos, work, weights, num_frames=STAGED_FRAMES)
    extract_features("rgb", videos, work, weights="random", device="cpu", loaders=0)
    extract_features("face", videos, work, weights=weights, device="cpu", loaders=0)
    extract_features("egemaps", videos, work, weights="random", device="cpu", loaders=0)
    code, out, err = quiet(tbl.main, ["--manifest", str(manifest), "--work", str(work), "--seeds", "1", "--jobs", "1"])
    assert code == 0, err
    bundle = root / "model"
    code, out, err = quiet(export_cli.main, ["--modalities", ",".join(MODALITIES), "--manifest", str(manifest),
                                             "--work", str(work), "--out", str(bundle)])
    assert code == 0, err
    return {"root": root, "weights": weights, "manifest": manifest, "videos": videos, "work": work,
            "bundle": bundle, "plans": {p.id: p for p in sample.load_plans(data)}}


def test_the_sample_faces_are_found_and_read_by_the_real_network(pipeline):
    plans, work = pipeline["plans"], pipeline["work"]
    with_face = [vid for vid, p in plans.items() if p.face]
    assert 0.25 <= len(with_face) / len(plans) <= 0.6
    for vid, p in plans.items():
        found = faces.load(work, vid).found
        if p.face:
            assert found.mean() >= 0.5, (vid, found)      # shapes pass in front of the face now and then
        else:
            assert not found.any(), (vid, found)
    feats = cache.load(work, "face")
    assert sorted(feats.ids) == sorted(with_face)
    assert set(cache.missing(work, "face").values()) == {"no face"}
    # the astronaut smiles: most frames of most faced videos read as happy
    happy = [(feats.x[i, :n, :7].argmax(1) == 3).mean() for i, n in enumerate(feats.lengths)]
    assert sum(h >= 0.5 for h in happy) >= 0.8 * len(happy), happy


def test_the_table_has_face_and_egemaps_rows_and_all_modalities_fuses_them(pipeline):
    table = json.loads((pipeline["work"] / "table" / "fixed-lstm" / "table.json").read_text())
    cells = {(c["row"], c["column"]): c for c in table["cells"]}
    assert cells[("Face", "RGB")]["modalities"] == ["face"] and cells[("Face", "RGB")]["status"] == "ok"
    assert cells[("eGeMAPS", "Flow/Audio")]["modalities"] == ["egemaps"]
    assert cells[("eGeMAPS", "Flow/Audio")]["status"] == "ok"
    joint = cells[("All modalities", "Joint")]
    assert joint["modalities"] == ["rgb", "face", "egemaps"] and joint["status"] == "ok"
    # the face cell scores only the test videos with a face; the joint one every test video
    assert cells[("Face", "RGB")]["n_test"] < joint["n_test"]
    md = (pipeline["work"] / "table" / "fixed-lstm" / "table.md").read_text()
    assert "| Face |" in md and "| eGeMAPS |" in md and "RANDOM BACKBONE WEIGHTS for rgb" in md
    assert "face (" not in md.split("RANDOM BACKBONE WEIGHTS")[1].split(".")[0]   # face had real weights


def test_predict_runs_the_faces_stage_and_both_modalities_for_new_videos(pipeline, tmp_path):
    by_id = {v.id: v for v in pipeline["videos"]}
    plans = pipeline["plans"]
    ids = [v.id for v in pipeline["videos"] if v.split == "test"][:6]
    assert any(plans[i].face for i in ids) and not all(plans[i].face for i in ids)
    new = write_manifest(tmp_path / "new.csv", [dataclasses.replace(by_id[i], label="", split="") for i in ids])
    work = tmp_path / "w2"
    code, out, err = quiet(predict_cli.main, ["--model", str(pipeline["bundle"]), "--manifest", str(new),
                                              "--work", str(work), "--weights", str(pipeline["weights"]),
                                              "--jobs", "1", "--device", "cpu"])
    assert code == 0, err
    assert "faces:" in out and all((work / "faces").glob("*.npz"))
    assert cache.exists(work, "face") and cache.exists(work, "egemaps")
    with open(work / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    train_face = cache.load(pipeline["work"], "face")
    new_face = cache.load(work, "face")
    for vid in ids:
        r = rows[vid]
        assert r["predicted"] in ("negative", "neutral", "positive")
        if plans[vid].face:
            assert r["face_predicted"] and "face" in r["modalities"].split("+")
            i, j = train_face.ids.index(vid), new_face.ids.index(vid)
            assert new_face.lengths[j] == train_face.lengths[i]
            assert abs(new_face.x[j] - train_face.x[i]).max() < 1e-4     # the same features again
        else:
            assert r["face_predicted"] == "" and "face: no face" in r["missing"]
        assert "egemaps" in r["modalities"].split("+")


def test_the_report_shows_face_crops_and_an_expression_strip(pipeline, tmp_path):
    out = tmp_path / "report"
    code, _, err = quiet(report.main, ["--manifest", str(pipeline["manifest"]), "--work", str(pipeline["work"]),
                                       "--out", str(out)])
    assert code == 0, err
    html = (out / "index.html").read_text(encoding="utf-8")
    plans = pipeline["plans"]
    assert 'id="face-legend"' in html and "<th>face</th>" in html
    rows = re.findall(r'<tr class="video [^"]*" data-id="([^"]+)".*?</tr>', html, flags=re.S)
    blocks = dict(zip(rows, re.findall(r'<tr class="video .*?</tr>', html, flags=re.S)))
    assert rows
    for vid, block in blocks.items():
        face_cell = block.split('<td class="face">')[1].split("</td>")[0]
        cells = face_cell.count('class="frame"') + face_cell.count('class="noface"')
        assert cells == STAGED_FRAMES, (vid, face_cell)
        if plans[vid].face:
            assert face_cell.count('alt="face"') >= 1 and "happy" in face_cell
        else:
            assert f"no face in {STAGED_FRAMES} frames" in face_cell and 'alt="face"' not in face_cell
    crops = list((out / "faces").glob("*.jpg"))
    assert crops and all(c.read_bytes()[:2] == b"\xff\xd8" for c in crops)
    assert "expressions from RANDOM weights" not in html


def test_the_face_column_in_a_real_browser(pipeline, tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    out = tmp_path / "report"
    assert quiet(report.main, ["--manifest", str(pipeline["manifest"]), "--work", str(pipeline["work"]),
                               "--out", str(out)])[0] == 0
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get((out / "index.html").as_uri())
        imgs = driver.find_elements(By.CSS_SELECTOR, "td.face img")
        assert imgs and all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in imgs)
        bars = driver.find_elements(By.CSS_SELECTOR, "td.face .strip span.frame i")
        assert bars and all(b.size["height"] > 0 for b in bars)
        hatched = driver.find_elements(By.CSS_SELECTOR, "td.face .strip span.noface")
        assert hatched and all(h.size["width"] >= 2 for h in hatched)
    finally:
        driver.quit()
