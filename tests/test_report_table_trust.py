"""What the table and the report can be trusted with: names from the manifest never run as
script, honest intervals on small test splits, published numbers only for the same classes,
one table folder per protocol and head."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from classify import published, report, stats
from classify import table as tbl
from extract.manifest import read_manifest, write_manifest
from benchmarks import cache as bench_cache

JS = "window.__pwned=1"  # no quotes: survives repr() into the leak warning
PAYLOADS = {"id": f"<img src=x onerror=\"{JS}\">", "class": f"<svg onload=\"{JS}\">",
            "group": f"<img src=y onerror=\"{JS}\">", "text": f"<script>{JS}</script>",
            "path": f"<iframe src=\"javascript:{JS}\">", "link": f"[click](javascript:{JS})"}
N = 75  # 15 test videos: fewer than 30


def _quiet(fn, *args):
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
        rc = fn(*args)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A work folder whose manifest carries a script payload in every column that reaches the page."""
    root = tmp_path_factory.mktemp("hostile")
    classes = ("negative", "neutral", PAYLOADS["class"])
    plain = bench_cache.synthetic_videos(N)
    videos = [(f"{PAYLOADS['id']}{i}", classes[bench_cache.CLASSES.index(label)], split)
              for i, (_, label, split) in enumerate(plain)]
    mp = pytest.MonkeyPatch()
    mp.setattr(bench_cache, "synthetic_videos", lambda n: videos[:n])
    mp.setattr(bench_cache, "CLASSES", classes)
    try:
        work = root / "work"
        bench_cache.synthetic_cache(work, N, signal=True)
        manifest = bench_cache.write_synthetic_manifest(root / "manifest.csv", N)
    finally:
        mp.undo()
    rows = read_manifest(manifest)
    # one group in every split: the leak warning names it in table.md
    rows = [dataclasses.replace(v, path=f"{PAYLOADS['path']}{k}.mp4", text=PAYLOADS["text"] + PAYLOADS["link"],
                                group=PAYLOADS["group"] + PAYLOADS["link"] if k < 10 else f"g{k}")
            for k, v in enumerate(rows)]
    write_manifest(manifest, rows)
    rc, _ = _quiet(tbl.main, ["--manifest", str(manifest), "--work", str(work), "--seeds", "2"])
    assert rc == 0
    rc, _ = _quiet(report.main, ["--manifest", str(manifest), "--work", str(work)])
    assert rc == 0
    return {"work": work, "manifest": manifest, "page": work / "report" / "index.html",
            "table": json.loads((work / "table" / "fixed-lstm" / "table.json").read_text(encoding="utf-8"))}


def test_no_payload_reaches_the_html_as_markup(hostile):
    html = hostile["page"].read_text(encoding="utf-8")
    assert PAYLOADS["group"] in hostile["table"]["leaking_groups"] or "&lt;img src=y" in html  # it did reach the page
    assert "&lt;img src=y" in html
    for tag in ("<img src=x", "<img src=y", "<svg", "<iframe", "<script>window", 'href="javascript'):
        assert tag not in html, tag
    assert html.count("<script") == 1  # the page's own script only


def test_markdown_renders_no_raw_html_or_links():
    out = report.safe_markdown(f"| a |\n|---|\n| {PAYLOADS['id']} {PAYLOADS['link']} **b** |\n")
    assert "<table>" in out and "<strong>b</strong>" in out and "<img" not in out and "<a " not in out


def _browser(tmp_path, width=1366):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver are missing: .ci/run installs them")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
                 f"--window-size={width},1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_no_payload_runs_in_a_real_browser(hostile, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _browser(tmp_path)
    try:
        driver.get(hostile["page"].resolve().as_uri())
        for el in driver.find_elements(By.CSS_SELECTOR, "tr.video td, .bar, a, #results td, #results li"):
            driver.execute_script("for (const e of ['mouseover','click','focus']) arguments[0].dispatchEvent(new Event(e))", el)
        assert driver.execute_script("return window.__pwned === undefined")
        assert "benchmark report" in driver.title
        assert "<img src=y onerror=" in driver.find_element(By.ID, "results").text  # shown as text
    finally:
        driver.quit()


def test_exact_interval_is_wide_on_three_videos():
    lo, hi = stats.exact_interval(3, 3)
    assert 0.28 < lo < 0.30 and hi == 1.0
    lo, hi = stats.exact_interval(0, 3)
    assert lo == 0.0 and 0.70 < hi < 0.72


def test_small_test_split_is_warned_and_its_interval_is_not_a_point(hostile):
    table = hostile["table"]
    assert table["n_test"] == 15 and "fewer than 30" in table["small_test_warning"]
    assert "Clopper-Pearson" in table["intervals"]["ci95"]
    md = (hostile["work"] / "table" / "fixed-lstm" / "table.md").read_text(encoding="utf-8")
    assert "**Warning**: only 15 test videos (fewer than 30)" in md and "Clopper-Pearson" in md
    for c in table["cells"]:
        if c["status"] == "ok":
            lo, hi = c["ci95"]
            assert hi - lo > 0.2 and c["ci95_by_metric"]["accuracy"] == c["ci95"]
    assert "only 15 test videos" in hostile["page"].read_text(encoding="utf-8")


def test_published_numbers_need_the_dataset_classes(tmp_path):
    assert published.class_mismatch("dmver", ["positive", "neutral", "negative"]) is None
    assert published.class_mismatch("iemocap", ["neu", "hap", "sad", "ang"]) is None
    assert published.class_mismatch("music-video", ["exciting", "fear", "neutral", "relaxation", "sad", "tension"]) is None
    assert "not DMVER's" in published.class_mismatch("dmver", ["neu", "hap", "sad", "ang"])
    work = tmp_path / "mydata" / "work"
    bench_cache.synthetic_cache(work, 60, signal=True)
    manifest = bench_cache.write_synthetic_manifest(tmp_path / "mydata" / "manifest.csv", 60)
    rc, out = _quiet(tbl.main, ["--manifest", str(manifest), "--work", str(work), "--seeds", "1", "--dataset", "iemocap"])
    assert rc == 0
    table = json.loads((work / "table" / "fixed-lstm" / "table.json").read_text(encoding="utf-8"))
    assert table["published_source"] is None and "not IEMOCAP's" in table["published_warning"]
    assert "published" not in out.split("\n## ", 1)[1].split("\n\n")[2]  # no published column
    assert "IEMOCAP" not in out.split("\n## ", 1)[1].splitlines()[0] and "mydata" in out
    rc, _ = _quiet(report.main, ["--manifest", str(manifest), "--work", str(work)])
    html = (work / "report" / "index.html").read_text(encoding="utf-8")
    assert "<title>mydata benchmark report</title>" in html and "DMVER benchmark report" not in html


def test_one_table_folder_per_protocol_and_head_and_the_report_says_which(tmp_path):
    work = tmp_path / "work"
    bench_cache.synthetic_cache(work, 60, signal=True)
    manifest = bench_cache.write_synthetic_manifest(tmp_path / "manifest.csv", 60)
    common = ["--manifest", str(manifest), "--work", str(work), "--seeds", "1", "--extra-rows", "none"]
    assert _quiet(tbl.main, common + ["--head", "mlp"])[0] == 0
    assert _quiet(tbl.main, common + ["--cv", "3"])[0] == 0
    assert (work / "table" / "fixed-mlp" / "table.json").is_file()
    assert (work / "table" / "cv3-lstm" / "table.json").is_file()
    assert json.loads((work / "table" / "fixed-mlp" / "table.json").read_text())["head"] == "mlp"
    rc, out = _quiet(report.main, ["--manifest", str(manifest), "--work", str(work)])
    assert rc == 0 and str(work / "table" / "cv3-lstm") in out


def test_make_passes_the_table_options_through():
    root = Path(__file__).resolve().parents[1]
    cmd = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(root), "table", "HEAD=mlp", "RULE=mean", "METRIC=macro_f1",
                          "SEEDS=2", "CV=5", "OUT=x/y", "EXTRA_ROWS=none"], capture_output=True, text=True)
    line = cmd.stdout.strip().splitlines()[-1]
    for opt in ("--head mlp", "--rule mean", "--metric macro_f1", "--seeds 2", "--cv 5", "--out x/y", "--extra-rows"):
        assert opt in line, (opt, line)
    rep = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(root), "report", "TABLE=w/table/cv5-mlp"], capture_output=True, text=True)
    assert "--table w/table/cv5-mlp" in rep.stdout


def test_the_videos_are_a_csv_download(hostile):
    import csv

    folder = hostile["page"].parent
    assert 'href="videos.csv"' in hostile["page"].read_text(encoding="utf-8")
    with open(folder / "videos.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == hostile["table"]["n_test"] and rows[0]["id"].startswith(PAYLOADS["id"])


def test_cv_report_shows_every_video_once_with_the_mean_over_seeds(tmp_path):
    import csv

    import numpy as np

    work = tmp_path / "work"
    bench_cache.synthetic_cache(work, 45, signal=True)
    manifest = bench_cache.write_synthetic_manifest(tmp_path / "manifest.csv", 45)
    common = ["--manifest", str(manifest), "--work", str(work), "--seeds", "2", "--extra-rows", "none"]
    assert _quiet(tbl.main, common + ["--cv", "3"])[0] == 0
    assert _quiet(report.main, ["--manifest", str(manifest), "--work", str(work)])[0] == 0
    table = json.loads((work / "table" / "cv3-lstm" / "table.json").read_text())
    cell, _ = report._browser_run(table)
    with open(work / "report" / "videos.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == table["n_test"] == 45  # every video once, not fold 0's only
    # each video's fused probabilities: the mean over the seeds' runs of the fold that tested it
    expected = {}
    for run in cell["runs"]:
        with np.load(Path(run) / "predictions.npz") as p:
            for vid, proba in zip(p["test_ids"].tolist(), p["test_proba"]):
                expected.setdefault(vid, []).append(proba)
    assert all(len(v) == 2 for v in expected.values())
    for r in rows:
        mean = np.mean(expected[r["id"]], axis=0)
        got = [float(r[f"p_{c}"]) for c in table["class_names"]]
        assert np.allclose(got, mean, atol=1e-5), r["id"]
    html = (work / "report" / "index.html").read_text(encoding="utf-8")
    assert html.count('class="video ') == 45 and "mean of the class probabilities over 2 seeds" in html
    assert "out-of-fold" in html


def test_the_video_table_fits_1366_pixels(hostile, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _browser(tmp_path, width=1366)
    try:
        driver.get(hostile["page"].resolve().as_uri())
        assert driver.execute_script("return window.innerWidth") <= 1366
        box = driver.find_element(By.CSS_SELECTOR, ".scroll")
        table = driver.find_element(By.ID, "videos")
        sizes = driver.execute_script("return [arguments[0].scrollWidth, arguments[0].clientWidth, "
                                      "document.documentElement.scrollWidth, document.documentElement.clientWidth, "
                                      "arguments[1].getBoundingClientRect().width]", box, table)
        assert sizes[0] <= sizes[1] and sizes[2] <= sizes[3], sizes
        driver.save_screenshot(str(tmp_path / "report-1366.png"))
    finally:
        driver.quit()
