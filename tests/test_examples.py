"""The user's own task in examples/ runs end to end and keeps its claims (quick settings)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from scipy import stats

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "own_task.py"


def test_own_task_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("own_task", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(quick=True, out=tmp_path / "own.json")
    assert (tmp_path / "own.json").exists()
    calm, shifted = results["in_distribution"], results["longer_pole"]
    # false alarms: given one calibration the per-episode rate is Beta(n + 1 - k, k) with mean <= alpha; its 0.999
    # quantile, then the binomial 0.999 quantile over the evaluation episodes
    held = results["config"]["calibration_episodes"] // 2
    k = int(-(-(held + 1) * 0.95 // 1))
    ceiling = stats.binom.ppf(0.999, calm["episodes"], stats.beta.ppf(0.999, held + 1 - k, k))
    assert calm["alarmed"]["k"] <= ceiling
    assert calm["falls"] == 0  # in distribution the agent balances
    assert shifted["falls"] > 0 and shifted["falls_caught"]["rate"] >= 0.9  # the longer pole falls; the margin sees it
    assert shifted["mean_steps_before_fall"] > 0
