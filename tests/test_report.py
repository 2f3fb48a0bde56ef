"""The HTML report: self-contained, and its plots render in headless Chromium without JS errors."""

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mesaguard.bench import BenchConfig, run_bench
from mesaguard.cli import app
from mesaguard.store import Store

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
DETECTORS = ("threshold", "envelope", "cusum", "meanshift")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    cfg = BenchConfig(("strawberry",), DETECTORS, (0,), episodes=10, calibration_episodes=20, alpha=0.2,
                      policy="misaligned")
    with Store(tmp / "b.sqlite") as store:
        run_id = run_bench(cfg, store)
    result = CliRunner().invoke(app, ["report", run_id, "--db", str(tmp / "b.sqlite"), "-o", str(tmp / "report.html")])
    assert result.exit_code == 0, result.output
    return tmp / "report.html"


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "<script src=" not in text and "cdn.plot.ly" not in text.split("</script>", 1)[1]  # nothing fetched
    assert text.count('class="plotly-graph-div"') == 2  # envelope and trade-off plots of the one scenario
    assert 'id="results"' in text and text.count("<tr>") == 1 + len(DETECTORS) + 1
    assert 4e6 < report.stat().st_size < 8e6  # plotly.js embedded once


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(report, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")
    errors = []
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile (Playwright takes the user data dir here, not as a flag)
            executable_path=str(CHROMIUM), headless=True, args=FLAGS, viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.new_page()
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            start = time.perf_counter()
            page.goto(report.as_uri())
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 4", timeout=20_000)
            rendered = time.perf_counter() - start
            assert page.locator(".js-plotly-plot").count() == 2
            assert page.locator("#results tbody tr").count() == len(DETECTORS) + 1
            for plot in ("envelope-strawberry", "tradeoff-strawberry"):
                assert page.locator(f"#{plot} .scatterlayer .trace").count() >= len(DETECTORS) + 1, plot
            assert page.locator("#envelope-strawberry .legendtext", has_text="envelope alarm line").count() == 1
            assert page.locator("#tradeoff-strawberry .legendtext").count() == len(DETECTORS) + 1
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert errors == [], errors
    assert shot.stat().st_size > 20_000
    print(f"report rendered in {rendered:.2f} s; screenshot {shot}")
