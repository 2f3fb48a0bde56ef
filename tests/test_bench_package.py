"""The bench as a package: its public names, a light results side, one definition of the results columns,
and safeguard arms that refuse to run without what they must be fitted with."""

import importlib
import re
import subprocess
import sys

import numpy as np
import pytest

import mesaguard.bench as bench
from mesaguard import metrics
from mesaguard.bench import RESULT_COLUMNS, SAFEGUARDS, BenchConfig, BenchError, BenchRow, FittedSafeguards
from mesaguard.bench.lock import run_lock
from mesaguard.calibration import Calibration


def test_every_public_name_resolves_to_its_module():
    assert sorted(bench.__all__) == sorted(bench._MODULE)
    for name in bench.__all__:
        module = importlib.import_module(f"mesaguard.bench.{bench._MODULE[name]}")
        assert getattr(bench, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        bench.nope  # noqa: B018


def test_the_report_loads_the_results_side_only():
    """Importing the report loads neither the rollout side of the bench nor the experiment, guard or monitor."""
    code = "import sys, mesaguard.report; print(sorted(m for m in sys.modules if m.startswith('mesaguard.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for module in ("mesaguard.experiment", "mesaguard.guard", "mesaguard.monitor", "mesaguard.bench.job",
                   "mesaguard.bench.arms", "mesaguard.bench.backends", "mesaguard.bench.run"):
        assert f"'{module}'" not in loaded, module
    assert "'mesaguard.bench.results'" in loaded


def _row(false_alarms_k):
    return BenchRow(
        scenario="lava", variant="deploy", detectors="cusum+envelope", seeds=2, alpha=0.05,
        false_alarms=metrics.rate(false_alarms_k, 40), misbehaving=metrics.rate(27, 40),
        detection=metrics.Detection(metrics.rate(27, 27), 2.25, float("nan")), lost_guarded=0.0, lost_free=0.675,
        catastrophes_guarded=0, catastrophes_free=27, prevented=1.0, score_kept=0.935,
    )


def test_one_definition_of_the_results_columns_serves_the_terminal_and_the_page():
    from mesaguard.cli.tables import bench_views
    from mesaguard.report import _results_table

    rows = [_row(1), _row(12)]  # 12 of 40: the interval lies above alpha
    page = _results_table(rows)
    assert re.findall(r"<th>(.*?)</th>", page) == [c.title for c in RESULT_COLUMNS]
    cells = [re.findall(r"<td>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", page)[1:]]
    assert cells[0][2:4] == ["joint", "0.025 [0.001, 0.132] (1/40)"]
    assert cells[0][6:9] == ["1.000 (27/27)", "2.2/-", "0.00/0.68"]
    assert '<span class="over">0.300' in cells[1][3] and "over" not in cells[0][3]
    # The terminal's 80-column table: a subset of the same cells, a cell's parts on lines of their own.
    (terminal, _) = bench_views(rows, [], "t")
    assert terminal.rows[0][2:5] == ["0.025\n[0.001, 0.132]", "1.000\n(27/27)", "2.2/-"]
    assert terminal.warn[1][2] and not terminal.warn[0][2]


def test_a_safeguard_without_its_fitted_part_is_an_error_not_a_bare_run():
    cfg = BenchConfig(("lava",), ("cusum",), (0,), 10, 40, alpha=0.2, policy="misaligned",
                      safeguards=("shield[copy]",))
    spec = cfg.jobs()[0]
    rng = np.random.default_rng(0)
    cal = Calibration.fit([rng.normal(1.0, 0.1, 20) for _ in range(40)], alpha=0.2, detectors=["cusum"])
    for name, what in (("shield[copy]", "increment bounds"), ("scope", "scope"), ("combined[copy]", "scope")):
        with pytest.raises(BenchError, match=f"safeguard {re.escape(repr(name))} needs the fitted {what}"):
            SAFEGUARDS[name](spec, "deploy", cal, FittedSafeguards())
    with pytest.raises(BenchError, match="needs the fitted learned model's increment bound"):
        SAFEGUARDS["shield[learned]"](spec, "deploy", cal, FittedSafeguards(bounds={"copy": -0.5}))
    make_env, _ = SAFEGUARDS["shield[copy]"](spec, "deploy", cal, FittedSafeguards(bounds={"copy": -0.5}))
    assert type(make_env()).__name__ == "Shield"


def test_an_in_memory_store_needs_no_lock(tmp_path):
    with run_lock(":memory:", "a"), run_lock(":memory:", "a"):
        pass
    with run_lock(str(tmp_path / "s.sqlite"), "a"), run_lock(str(tmp_path / "s.sqlite"), "b"):  # runs apart
        assert len(list(tmp_path.glob("s.sqlite.*.lock"))) == 2
    assert not list(tmp_path.glob("*.lock"))
