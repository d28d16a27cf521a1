"""`make report`: the static page, checked in a real browser (headless Chromium through Selenium)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest

from benchmarks.cache import synthetic_cache, write_synthetic_manifest
from classify import report
from classify import table as tbl
from extract import frames
from extract.layout import Work
from extract.manifest import read_manifest

N = 75  # 15 test videos


def _browser_available() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    work = root / "work"
    synthetic_cache(work, N, signal=True)
    manifest = write_synthetic_manifest(root / "manifest.csv", N)
    rng = np.random.default_rng(0)
    for v in read_manifest(manifest):  # a frames output per video, so the page has thumbnails
        clip = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
        data, offsets = frames.encode_jpegs(clip, 90)
        out = Work(work).output("frames", v.id, ".npz")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as f:
            np.savez(f, jpeg=data, offsets=offsets, meta=np.array("{}"))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert tbl.main(["--manifest", str(manifest), "--work", str(work), "--seeds", "1"]) == 0
        assert report.main(["--manifest", str(manifest), "--work", str(work)]) == 0
    page = work / "report" / "index.html"
    cell, run = report._browser_run(json.loads((work / "table" / "fixed-lstm" / "table.json").read_text()))
    metrics = json.loads((run / "metrics.json").read_text())["joint"]
    return {"work": work, "manifest": manifest, "page": page, "metrics": metrics, "cell": cell}


def test_the_page_is_self_contained(built):
    html = built["page"].read_text(encoding="utf-8")
    assert "<script src" not in html and "http://" not in html and "https://" not in html
    folder = built["page"].parent
    for name in ("confusion_joint.png", "per_class_recall.png"):
        assert (folder / name).is_file() and f'src="{name}"' in html
    thumbs = list((folder / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 4 * built["metrics"]["n"] and all(t.read_bytes()[:2] == b"\xff\xd8" for t in thumbs)
    assert html.count('class="video ') == built["metrics"]["n"]
    assert "RANDOM BACKBONE WEIGHTS" in html  # the banner travels with the numbers


def test_missing_table_is_one_line_exit_2(tmp_path):
    manifest = write_synthetic_manifest(tmp_path / "manifest.csv", 15)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert report.main(["--manifest", str(manifest), "--work", str(tmp_path / "nothing")]) == 2
    assert "make table" in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1


def test_the_report_renders_the_table_written_with_out(built, tmp_path):
    """`classify.table --out X` then `classify.report --table X`: the page shows X's table and
    figures, not the work folder's default table."""
    work, manifest = built["work"], built["manifest"]
    elsewhere, page_dir = tmp_path / "tables" / "dmver", tmp_path / "page"
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        assert tbl.main(["--manifest", str(manifest), "--work", str(work), "--seeds", "1", "--dataset", "dmver",
                         "--out", str(elsewhere)]) == 0
        assert report.main(["--manifest", str(manifest), "--work", str(work), "--table", str(elsewhere),
                            "--out", str(page_dir)]) == 0
    html = (page_dir / "index.html").read_text(encoding="utf-8")
    assert "RGB published" in html and "61.67" in html  # only the --dataset dmver table has these
    assert "RGB published" not in built["page"].read_text(encoding="utf-8")
    for name in ("confusion_joint.png", "per_class_recall.png"):
        assert (page_dir / name).read_bytes() == (elsewhere / name).read_bytes()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert report.main(["--manifest", str(manifest), "--work", str(work), "--table", str(tmp_path / "none"),
                            "--out", str(tmp_path / "page2")]) == 2
    assert str(tmp_path / "none" / "table.json") in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
    assert not (tmp_path / "page2").exists()


@pytest.fixture
def browser(tmp_path):
    if not _browser_available():
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: .ci/run installs them")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def test_the_page_in_a_real_browser(built, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(built["page"].resolve().as_uri())
    assert browser.find_elements(By.CSS_SELECTOR, "#results table")  # the results table is rendered
    assert "ConvNet+LSTM" in browser.find_element(By.ID, "results").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#videos tr.video")
    n = built["metrics"]["n"]
    assert len(rows) == n and all(r.is_displayed() for r in rows)
    assert all(len(r.find_elements(By.CSS_SELECTOR, "td.thumbs img")) == 4 for r in rows)
    errors = n - int(round(built["metrics"]["accuracy"] * n))
    browser.find_element(By.ID, "errors-only").click()
    visible = [r for r in rows if r.is_displayed()]
    assert len(visible) == errors and browser.find_element(By.ID, "shown-count").text == str(errors)
    assert all("error" in r.get_attribute("class") for r in visible)
    browser.find_element(By.ID, "errors-only").click()
    Select(browser.find_element(By.ID, "true-class")).select_by_visible_text("negative")
    assert all(r.get_attribute("data-true") == "negative" for r in rows if r.is_displayed())
    Select(browser.find_element(By.ID, "true-class")).select_by_index(0)
    Select(browser.find_element(By.ID, "sort")).select_by_value("conf-desc")
    confs = [float(r.get_attribute("data-conf")) for r in browser.find_elements(By.CSS_SELECTOR, "#videos tr.video")]
    assert confs == sorted(confs, reverse=True)
    assert browser.save_screenshot(str(tmp_path / "report.png"))


def test_the_joint_head_rows_are_on_the_page(built):
    """The table's joint-head rows (`classify.table --joint`, on by default) are rendered, and the
    video browser still shows a late fusion, whose single runs give the per-modality bars."""
    html = built["page"].read_text(encoding="utf-8")
    for rule in ("early", "tfn", "xattn"):
        assert f"All modalities, {rule}" in html
    assert built["cell"]["rule"] == "weighted"
