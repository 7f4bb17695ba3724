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


def test_report_in_headless_chromium(report_run, tmp_path):
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
        # test artifacts go beside the run, not into it (a run folder holds only what koopmanlens writes)
        driver.save_screenshot(str(tmp_path / "report-screenshot.png"))
        (tmp_path / "report-load.json").write_text(json.dumps({"load_s": load_s}))
    finally:
        driver.quit()


PAYLOAD = (
    "</script><script>window.__pwned=1</script>"
    '<img src=x onerror="window.__pwned=1"><svg onload="window.__pwned=1"></svg>'
    '<a href="javascript:window.__pwned=1">[link=https://evil.example]x[/link]</a>'
)


def _plant(obj, skip=("format",)):
    """``obj`` with every string value (not keys, not ``skip``) replaced by PAYLOAD."""
    if isinstance(obj, str):
        return PAYLOAD
    if isinstance(obj, list):
        return [_plant(v) for v in obj]
    if isinstance(obj, dict):
        return {k: v if k in skip else _plant(v) for k, v in obj.items()}
    return obj


@pytest.fixture(scope="module")
def planted_run(report_run, tmp_path_factory):
    """A copy of the report run with a script payload in every string of metrics.json, run.json and
    views.json, plus a stored edit and a spectrum block, and its report.html regenerated. Built once
    per module: the tests that use it only read it."""
    from koopmanlens.report import write_report

    run = tmp_path_factory.mktemp("planted") / "planted"
    shutil.copytree(report_run, run)
    res = runner.invoke(app, ["spectrum", str(run)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["edit", str(run), "--forget", "1"])
    assert res.exit_code == 0, res.output
    edits = [p.relative_to(run) for p in (run / "edits").glob("*.json")]
    for name in ("metrics.json", "run.json", "views.json", *edits):
        path = run / name
        path.write_text(json.dumps(_plant(json.loads(path.read_text()))))
    write_report(run)
    return run


def test_report_refuses_a_payload_where_a_number_belongs(report_run, tmp_path):
    """The probe's ``n_test``: a string where metrics.json holds a count never reaches the page."""
    from koopmanlens.errors import KoopmanLensError
    from koopmanlens.report import write_report

    run = tmp_path / "n_test"
    shutil.copytree(report_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["n_test"] = PAYLOAD
    (run / "metrics.json").write_text(json.dumps(metrics))
    before = (run / "report.html").read_bytes()
    with pytest.raises(KoopmanLensError, match="n_test"):
        write_report(run)
    assert (run / "report.html").read_bytes() == before


def test_report_escapes_planted_strings(planted_run):
    text = (planted_run / "report.html").read_text()
    for raw in ("<script>window.__pwned", "<img src=x", "<svg onload", '<a href="javascript'):
        assert raw not in text
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text  # shown, as text


def test_report_with_planted_strings_in_headless_chromium(planted_run):
    driver = _driver()
    try:
        driver.get((planted_run / "report.html").as_uri())
        time.sleep(1)
        assert driver.execute_script("return typeof window.__pwned") == "undefined"
        injected = driver.execute_script(
            'return document.querySelectorAll(\'img[src="x"], svg[onload], a[href^="javascript"]\').length'
        )
        assert injected == 0
        handlers = driver.execute_script(
            "return Array.from(document.querySelectorAll('*')).filter(e => Array.from(e.attributes)"
            ".some(a => a.name.startsWith('on'))).map(e => e.outerHTML.slice(0, 80))"
        )
        assert handlers == []
        assert "window.__pwned=1" in driver.execute_script("return document.body.innerText")
        assert driver.execute_script("return document.getElementById('kae-steps')._fullData.length") == 3
        assert driver.execute_script("return typeof window.__pwned") == "undefined"
    finally:
        driver.quit()


def test_report_with_wrong_types_fails_clearly(report_run, tmp_path):
    from koopmanlens.errors import KoopmanLensError
    from koopmanlens.report import write_report

    run = tmp_path / "typed"
    shutil.copytree(report_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics.update(n_test=[1, 2], split=3, dataset={"a": 1})
    metrics["topology"]["eps"] = "x"
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(KoopmanLensError, match=r"metrics\.json"):
        write_report(run)
    metrics = json.loads((report_run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(metrics))
    views = json.loads((run / "views.json").read_text())
    views["class_names"] = [1, None, {"b": 2}]
    (run / "views.json").write_text(json.dumps(views))
    with pytest.raises(KoopmanLensError, match=r"views\.json.*class_names"):
        write_report(run)  # checked on load: the file, the field and what was found


def test_report_does_not_follow_symlinks(report_run, tmp_path):
    run = tmp_path / "linked"
    shutil.copytree(report_run, run)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("figures/training.png", "figures/layers.png", "report.html"):
        target = outside / name.replace("/", "-")
        target.write_bytes(b"precious")
        (run / name).unlink()
        (run / name).symlink_to(target)
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 2 and "symbolic link" in res.output, res.output  # refused up front
    from koopmanlens.errors import ArtifactError
    from koopmanlens.report import write_report

    with pytest.raises(ArtifactError, match="symbolic link"):
        write_report(run)  # the writer itself never writes through a link either
    for target in outside.iterdir():
        assert target.read_bytes() == b"precious"


def test_report_shows_post_processing_results(report_run, tmp_path):
    run = tmp_path / "post"
    shutil.copytree(report_run, run)
    for args in (["spectrum", str(run)], ["edit", str(run), "--forget", "2", "--method", "emmet-kmeans"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["topology"]["layer_spearman"] = 0.123456789012345
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0
    text = (run / "report.html").read_text()
    assert "Spectrum of the operator" in text and "spectral radius" in text
    assert "Stored edits" in text and "forget-2-into-" in text and "emmet-kmeans" in text
    assert "Topology" in text and "Unlearning" in text
    assert "+0.12" in text and "0.123456" not in text
    assert "dataset" in text and "preset" in text  # the run's spec from run.json


LAYOUT_JS = """
var out = [];
for (const id of ['kae-steps', 'net-layers']) {
  var g = document.getElementById(id), box = g.parentElement.getBoundingClientRect();
  var svg = g.querySelector('.main-svg').getBoundingClientRect();
  var labels = Array.from(g.querySelectorAll('.slider-label')).filter(e => e.textContent)
    .map(e => e.getBoundingClientRect()).sort((a, b) => a.left - b.left);
  out.push({id: id, col: [box.left, box.right], svg: [svg.left, svg.right],
            labels: labels.map(b => [b.left, b.right])});
}
return out;
"""


@pytest.mark.parametrize("width", [1400, 1000])
def test_report_plots_fit_their_columns(report_run, width):
    driver = _driver()
    try:
        driver.set_window_size(width, 1000)
        driver.get((report_run / "report.html").as_uri())
        time.sleep(1)
        for plot in driver.execute_script(LAYOUT_JS):
            left, right = plot["col"]
            assert left - 1 <= plot["svg"][0] and plot["svg"][1] <= right + 1, plot
            assert len(plot["labels"]) >= 2, plot
            for a, b in zip(plot["labels"], plot["labels"][1:], strict=False):
                assert a[1] <= b[0], plot  # no two slider labels overlap
            assert all(left - 1 <= lo and hi <= right + 1 for lo, hi in plot["labels"]), plot
        title = "return document.querySelector('#kae-steps .gtitle').textContent"
        assert driver.execute_script(title).endswith("s = 0")
        driver.execute_script(
            "Plotly.animate('kae-steps', ['step' + (document.getElementById('kae-steps')"
            "._fullLayout.sliders[0].steps.length - 1)], {mode: 'immediate', frame: {redraw: true}})"
        )
        time.sleep(1)
        assert driver.execute_script(title).endswith("s = 100")
    finally:
        driver.quit()
