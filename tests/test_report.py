"""Figures and report.html: static checks, and a real headless Chromium that opens the report from
disk (skipped, with the reason, where Chromium, chromedriver or selenium is absent; failed instead
under CI=true)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from helpers import missing_prerequisite, quick_yinyang
from typer.testing import CliRunner

from koopmanlens.cli import app

runner = CliRunner()
FIGURES = {"layers.png", "steps.png", "edit.png", "topology.png", "spectrum.png", "training.png"}


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "run"
    res = quick_yinyang(out, 2, report=True)
    assert res.exit_code == 0, res.output
    return out


def test_report_files_and_size(report_run):
    page = report_run / "report.html"
    assert page.exists()
    assert page.stat().st_size < 10 * 1024 * 1024
    assert {p.name for p in (report_run / "figures").glob("*.png")} == FIGURES
    text = page.read_text()
    # self-contained: no script, stylesheet or image is fetched from anywhere
    from html.parser import HTMLParser

    class Refs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.refs = []
            self.images = 0

        def handle_starttag(self, tag, attrs):
            self.images += tag == "img"
            for name, value in attrs:
                if name in ("src", "href") and value and not value.startswith("data:"):
                    self.refs.append((tag, value))

    parser = Refs()
    parser.feed(text)
    assert parser.refs == []
    assert parser.images == len(FIGURES)
    assert 'id="kae-steps"' in text and 'id="net-layers"' in text
    views = json.loads((report_run / "views.json").read_text())
    assert views["steps"][0] == 0 and views["steps"][-1] == 100


def test_report_command_regenerates(report_run):
    (report_run / "report.html").unlink()
    shutil.rmtree(report_run / "figures")
    (report_run / "views.safetensors").unlink()
    res = runner.invoke(app, ["report", str(report_run)])
    assert res.exit_code == 0, res.output
    assert (report_run / "report.html").exists()
    assert {p.name for p in (report_run / "figures").glob("*.png")} == FIGURES


def _driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        missing_prerequisite(
            "Chromium or chromedriver is not installed (Debian packages chromium, chromium-driver)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_prerequisite("selenium is not installed (pip install '.[test]')")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


def test_report_in_headless_chromium(report_run):
    driver = _driver()
    try:
        start = time.perf_counter()
        driver.get((report_run / "report.html").as_uri())
        rendered = driver.execute_script(
            "var g = document.getElementById('kae-steps');"
            "return !!(window.Plotly && g && g._fullData && g._fullLayout);"
        )
        load_s = time.perf_counter() - start
        assert rendered
        n_traces = driver.execute_script("return document.getElementById('kae-steps')._fullData.length")
        assert n_traces == 3  # one trace per class
        assert driver.execute_script("return document.querySelectorAll('#kae-steps canvas').length") >= 1
        assert driver.execute_script("return document.querySelectorAll('img').length") == len(FIGURES)
        before = driver.execute_script(
            "return Array.from(document.getElementById('kae-steps')._fullData[0].x)"
        )
        # move the slider: press and release the mouse on the slider rail, 70% along
        driver.execute_script(
            "var r = document.querySelector('#kae-steps .slider-rail-touch-rect');"
            "r.scrollIntoView({block: 'center'}); var b = r.getBoundingClientRect();"
            "var x = b.left + 0.7 * b.width, y = b.top + b.height / 2;"
            "var o = {clientX: x, clientY: y, bubbles: true, view: window};"
            "r.dispatchEvent(new MouseEvent('mousedown', o));"
            "window.dispatchEvent(new MouseEvent('mouseup', o));"
        )
        deadline = time.time() + 10
        active = 0
        while time.time() < deadline and active == 0:
            time.sleep(0.1)
            active = driver.execute_script(
                "return document.getElementById('kae-steps')._fullLayout.sliders[0].active"
            )
        assert active > 0
        after = driver.execute_script(
            "return Array.from(document.getElementById('kae-steps')._fullData[0].x)"
        )
        assert after != before
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        driver.save_screenshot(str(report_run / "report-screenshot.png"))
        (report_run / "report-load.json").write_text(json.dumps({"load_s": load_s}))
    finally:
        driver.quit()
