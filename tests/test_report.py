"""The HTML report: self-contained and small, read from the store alone, and drawn by a real browser.

What it shows is checked against what the guard computes: the deficit lines against the
stored increments and the envelope's reference, the envelope's alarm line against where
the envelope alarms, the monitor's evidence against the deployment table's alarm.
"""

import re
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mesaguard.bench import BenchConfig, load_run, run_bench
from mesaguard.bench.config import detector_configs
from mesaguard.bench.replay import first_alarms
from mesaguard.bench.results import StoredJob
from mesaguard.cli import app
from mesaguard.report import plotlyjs
from mesaguard.report.decimate import MAX_POINTS, decimate
from mesaguard.report.deficit import deficit, deficit_figure, reference
from mesaguard.report.evidence import evidence_figure, evidence_paths
from mesaguard.report.labels import alpha_label
from mesaguard.report.tradeoff import tradeoff_figure
from mesaguard.rollout import Episode
from mesaguard.scenarios import SCENARIOS
from mesaguard.store import Store

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
DETECTORS = ("threshold", "envelope", "cusum", "meanshift")
SAFEGUARDS = ("shield[copy]",)
ALPHA = 0.2
FIGURES = ("deficit", "evidence", "tradeoff")  # per scenario
MAX_BYTES = 1_500_000  # the bound for a two-scenario report; one scenario must fit with room to spare


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small stored bench run of strawberry (scripted misaligned policy) with one safeguard."""
    tmp = tmp_path_factory.mktemp("report")
    cfg = BenchConfig(("strawberry",), DETECTORS, (0,), episodes=10, calibration_episodes=20, alpha=ALPHA,
                      policy="misaligned", safeguards=SAFEGUARDS)
    with Store(tmp / "b.sqlite") as store:
        run_id = run_bench(cfg, store)
    return tmp / "b.sqlite", run_id


@pytest.fixture(scope="module")
def report(run):
    db, run_id = run
    out = db.parent / "report.html"
    result = CliRunner().invoke(app, ["report", run_id, "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def job(run) -> StoredJob:
    db, run_id = run
    with Store(db) as store:
        _, jobs = load_run(store, run_id)
    return jobs[("strawberry", 0)]


def test_report_is_self_contained_with_one_plotly_and_small(report):
    text = report.read_text()
    assert "<script src=" not in text and "cdn.plot.ly" not in text.split("</script>", 1)[1]  # nothing fetched
    assert text.count("* plotly.js (basic - minified) v") == 1  # one copy of plotly.js for the whole page
    assert text.count('class="plotly-graph-div"') == len(FIGURES)
    for figure in FIGURES:
        assert f'id="{figure}-strawberry"' in text
    assert len(text.encode()) - len(plotlyjs.script().encode()) < 150_000  # figures and tables: a few kB each
    assert report.stat().st_size < MAX_BYTES


def test_report_has_the_detectors_the_safeguards_and_the_deployment_monitor_tables(report):
    text = report.read_text()

    def rows(table_id):
        table = re.search(rf'<table id="{table_id}">(.*?)</table>', text, re.S)
        assert table, table_id
        return re.findall(r"<tr>(.*?)</tr>", table.group(1))[1:]

    assert len(rows("results")) == len(DETECTORS) + 1  # each detector, and all jointly, on strawberry's deploy
    safeguards = rows("safeguards")
    assert len(safeguards) == len(SAFEGUARDS) and "<td>shield[copy] (oracle)</td>" in safeguards[0]
    deployment = rows("deployment")
    assert len(deployment) == (len(DETECTORS) + 1) * 2  # every configuration on the train and deploy variants
    assert all(re.search(r"<td>\d+/1</td>", r) for r in deployment)  # deployments alarmed / seeds


def test_deficit_is_the_score_minus_the_in_distribution_mean_and_the_alarm_line_is_the_envelopes(job):
    ref = reference(job, ALPHA)
    envelope = job.calibration.detectors["envelope"]
    assert ref.mean.tolist() == envelope.params["mean"]
    fig = deficit_figure("strawberry", job, DETECTORS, ALPHA, seed=0)
    for col, variant in enumerate(job.variants, start=1):
        xaxis = "x" if col == 1 else f"x{col}"
        traces = [t for t in fig.data if t.xaxis == xaxis]
        episodes = [e for _, e in job.evaluation[variant][:3]]
        lines = [t for t in traces if t.legendgroup == variant]
        assert len(lines) == len(episodes) and sum(bool(t.showlegend) for t in lines) == 1  # one legend entry
        for t, e in zip(lines, episodes, strict=True):  # short episodes: drawn whole, the exact deficit
            score = np.cumsum(e.increments)
            steps = np.arange(e.length)
            assert np.allclose(t.y, score - ref.mean[np.minimum(steps, ref.mean.size - 1)], atol=1e-5)
        longest = max(e.length for e in episodes)
        assert tuple(fig.layout[f"xaxis{col if col > 1 else ''}"].range) == (0.5, longest + 0.5)  # fitted
        hits = first_alarms(job.calibration, ["envelope"], [e.increments for e in episodes])
        (markers,) = [t for t in traces if t.name == "alarm: envelope"] or [None]
        assert (markers is None) == all(h is None for h in hits)
        for h, e in zip(hits, episodes, strict=True):  # the envelope alarms where the deficit crosses its line
            if h is not None:
                step = h[0]
                below = deficit(e.increments, ref.mean)[step - 1] < ref.alarm_line(np.array([step]))[0]
                assert below and step in list(markers.x)


def test_long_traces_are_decimated_and_keep_their_dips(job):
    rng = np.random.default_rng(1)
    long = rng.normal(0.0, 1.0, 5_000)
    long[3_217], long[3_218] = -1_000.0, 1_000.0  # a one-step dip of the score at step 3,218: a plot must show it
    stretched = StoredJob(job.calibration, job.floor, reference=job.reference, calibration_runs=job.calibration_runs)
    for variant in job.variants:
        stretched.evaluation[variant] = [(0, Episode(7, long, np.array([], dtype=np.int64)))]
    fig = deficit_figure("long", stretched, DETECTORS, ALPHA, seed=0)
    for t in fig.data:
        assert len(t.x) <= MAX_POINTS, t.name
    lines = [t for t in fig.data if t.legendgroup == job.reference]
    d = deficit(long, reference(job, ALPHA).mean)
    assert {3_218, int(np.argmin(d)) + 1, int(np.argmax(d)) + 1} <= set(lines[0].x.tolist())  # the dip, the extremes
    assert tuple(fig.layout.xaxis.range) == (0.5, 5_000.5)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=400),
    st.integers(4, 60),
)
def test_decimation_is_bounded_ordered_and_keeps_every_buckets_extremes(values, max_points):
    y = np.asarray(values)
    keep = decimate(y, max_points)
    assert keep.size <= max_points and np.all(np.diff(keep) > 0)
    assert keep[0] == 0 and keep[-1] == y.size - 1
    assert y[keep].min() == y.min() and y[keep].max() == y.max()  # no dip or peak lost
    if y.size <= max_points:
        assert keep.tolist() == list(range(y.size))


def test_the_monitors_evidence_crosses_its_threshold_where_the_deployment_alarms(job):
    from mesaguard.monitor import replay

    paths = evidence_paths(job, DETECTORS, seed=0)
    for variant, path in paths.items():
        episodes = [e.increments for _, e in job.evaluation[variant]]
        alarm = replay(job.calibration, episodes, list(DETECTORS), ALPHA, seed=0)  # the deployment table's replay
        crossed = np.flatnonzero(path >= np.log(1 / ALPHA))
        assert (alarm is None) == (crossed.size == 0), variant
        if alarm is not None:
            assert alarm.episode == crossed[0] + 1, variant
    fig = evidence_figure("strawberry", job, DETECTORS, ALPHA, seed=0)
    assert fig.data[0].name == f"alarm threshold log(1/α), {alpha_label(ALPHA)}"
    assert {t.legendgroup for t in fig.data[1:]} == set(job.variants)


def test_alpha_labels_are_read_as_people_write_them(run, job):
    from mesaguard.bench import tradeoff

    db, run_id = run
    with Store(db) as store:
        curves = tradeoff(store, run_id, (0.1, 0.15, 0.1 + 0.2, ALPHA))
    fig = tradeoff_figure("strawberry", curves, ALPHA)
    texts = [x for t in fig.data for x in t.text if x]
    assert texts and all(re.fullmatch(r"α = 0\.\d{1,2}", x) for x in texts), texts
    hovers = [row[0] for t in fig.data for row in t.customdata]
    assert set(hovers) == {"α = 0.1", "α = 0.15", "α = 0.2", "α = 0.3"}  # 0.1 + 0.2 too, not 0.30000000000000004


def test_a_run_of_a_scenario_not_registered_here_is_reported(run, tmp_path):
    """A stored run names a user's own scenario, unknown where the report is made: the report needs no registry."""
    db, run_id = run
    copy = tmp_path / "user.sqlite"
    shutil.copy(db, copy)
    name = "my-own-task"
    assert name not in SCENARIOS
    with sqlite3.connect(copy) as con:
        con.execute("UPDATE runs SET config = replace(config, '\"strawberry\"', ?)", (f'"{name}"',))
        con.execute("UPDATE jobs SET scenario = ?", (name,))
    out = tmp_path / "user.html"
    result = CliRunner().invoke(app, ["report", run_id, "--db", str(copy), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    for figure in FIGURES:
        assert f'id="{figure}-{name}"' in text
    assert "not registered here" in text and f"<td>{name}</td>" in text


def test_the_vendored_plotly_is_the_version_plotly_py_writes_for():
    from plotly.offline import get_plotlyjs_version

    assert plotlyjs.VERSION == get_plotlyjs_version()
    assert plotlyjs.script().startswith(f"/**\n* plotly.js (basic - minified) v{plotlyjs.VERSION}\n")
    assert plotlyjs.BUNDLE.with_name("plotly-basic.LICENSE").read_text().startswith("MIT License")


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
            drawn = " && ".join(f"document.querySelectorAll('#{f}-strawberry .main-svg').length >= 2" for f in FIGURES)
            page.wait_for_function(drawn, timeout=20_000)  # every figure drawn by plotly
            rendered = time.perf_counter() - start
            assert page.locator(".js-plotly-plot").count() == len(FIGURES)
            assert page.locator("#results tbody tr").count() == len(DETECTORS) + 1
            assert page.locator("#safeguards tbody tr").count() == len(SAFEGUARDS)
            configs = len(detector_configs(DETECTORS))
            deficit_plot = page.locator("#deficit-strawberry")
            assert deficit_plot.locator(".scatterlayer .trace").count() >= 2 * (2 + 3)  # per panel: 0, line, episodes
            assert deficit_plot.locator(".scatterlayer .trace path.js-line").count() >= 2 * 3
            legend = [t.strip() for t in deficit_plot.locator(".legendtext").all_text_contents()]
            assert "train episodes (in-distribution)" in legend and "deploy episodes (shifted)" in legend
            assert f"envelope alarm line ({alpha_label(ALPHA)})" in legend
            assert any(t.startswith("alarm: ") for t in legend)
            evidence = page.locator("#evidence-strawberry")
            assert evidence.locator(".scatterlayer .trace path.js-line").count() >= 3  # threshold and two variants
            assert any("deployment alarm" in t for t in evidence.locator(".legendtext").all_text_contents())
            tradeoff = page.locator("#tradeoff-strawberry")
            assert tradeoff.locator(".legendtext").count() == configs
            assert tradeoff.locator(".textpoint", has_text="α = ").count() >= 1
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert errors == [], errors
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 100_000  # a full page of tables and plots, not a blank
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == 1400 and height > 460 + 400 + 430  # taller than the three figures (plus the tables)
    image = pytest.importorskip("PIL.Image").open(shot).convert("RGB")
    assert len(image.getcolors(maxcolors=1 << 24)) > 200  # lines, markers, text in many shades: not a blank page
    print(f"report rendered in {rendered:.2f} s; screenshot {shot}")
