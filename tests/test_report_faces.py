"""The report's face column on hostile ids: face crops and expression strips, escaped, in a real browser."""
from __future__ import annotations

import json

import numpy as np
import pytest

from classify import report
from extract import faces, stage
from extract.layout import Work
from features import cache
from features.expression import EMOTIONS
from tests.test_report_table_trust import JS, _browser, _quiet, hostile  # noqa: F401  (the fixture)

T = 6


def _write_faces(work, video_id: str, found: np.ndarray) -> None:
    """A faces output in the stage's layout (`extract.faces`): grey crops where `found`."""
    crops = np.full((len(found), 32, 32, 3), 128, np.uint8)
    data, offsets = faces._encode(crops, found, 90)
    boxes = np.where(found[:, None], np.array([[10, 10, 50, 50]], np.float32), np.nan).astype(np.float32)
    out = Work(work).output(faces.NAME, video_id, faces.SUFFIX)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage.write_output(out, lambda f: np.savez(f, jpeg=data, offsets=offsets, boxes=boxes,
                                               scores=found.astype(np.float32), found=found,
                                               crop_size=np.int64(32), meta=np.array(json.dumps({}))))


@pytest.fixture(scope="module")
def faced_report(hostile, tmp_path_factory):  # noqa: F811
    """The hostile work folder with a faces output per video (every third without a face) and a face cache."""
    work = hostile["work"]
    ids = cache.load(work, "rgb").ids
    rng = np.random.default_rng(0)
    attrs = {"modality": "face", "weights": "pretrained", "backbone": "MiniXception", "dim": 135}
    with cache.ShardWriter(work, "face", attrs) as writer:
        for k, vid in enumerate(ids):
            found = np.zeros(T, bool) if k % 3 == 0 else np.array([True, True, False, True, True, False])
            _write_faces(work, vid, found)
            if found.any():
                probs = rng.dirichlet(np.ones(len(EMOTIONS)), size=int(found.sum()))
                writer.write(vid, np.concatenate([probs, rng.standard_normal((len(probs), 128))], 1).astype(np.float32))
            else:
                writer.missing(vid, "no face")
        writer.consolidate(ids)
    out = tmp_path_factory.mktemp("faced-report") / "report"
    rc, _ = _quiet(report.main, ["--manifest", str(hostile["manifest"]), "--work", str(work), "--out", str(out)])
    assert rc == 0
    return out / "index.html"


def test_the_face_column_is_there_and_escaped(faced_report):
    html = faced_report.read_text(encoding="utf-8")
    assert "<th>face</th>" in html and html.count('<td class="face">') == html.count('class="video ')
    for tag in ("<img src=x", "<svg", "<iframe", "<script>window"):
        assert tag not in html, tag
    assert html.count("<script") == 1
    assert html.count('class="noface"') > 2 * html.count('class="video ') and "no face in 6 frames" in html
    assert html.count('class="frame"') >= 4
    assert all(p.read_bytes()[:2] == b"\xff\xd8" for p in (faced_report.parent / "faces").glob("*.jpg"))


def test_the_face_column_fits_and_runs_nothing_in_a_real_browser(faced_report, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _browser(tmp_path)
    try:
        driver.get(faced_report.resolve().as_uri())
        for el in driver.find_elements(By.CSS_SELECTOR, "td.face, td.face span, td.face img"):
            driver.execute_script("for (const e of ['mouseover','click','focus']) arguments[0].dispatchEvent(new Event(e))", el)
        assert driver.execute_script("return window.__pwned === undefined")
        imgs = driver.find_elements(By.CSS_SELECTOR, "td.face img")
        assert imgs and all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in imgs)
        strip = driver.find_elements(By.CSS_SELECTOR, "td.face .strip span")
        assert strip and all(s.size["width"] >= 2 and s.size["height"] > 0 for s in strip)
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, overflow          # the table, face column included, fits 1,366 px
    finally:
        driver.quit()
