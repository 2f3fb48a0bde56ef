"""The `mesaguard` command on the strawberry scenario, at small budgets (its failures: test_cli_errors.py)."""

import json

from typer.testing import CliRunner

from mesaguard.calibration import Calibration
from mesaguard.cli import app

runner = CliRunner()


def test_scenarios_lists_strawberry():
    result = runner.invoke(app, ["scenarios"])
    assert result.exit_code == 0 and "strawberry" in result.output and "goal" in result.output


def test_calibrate_then_deploy(tmp_path):
    cal_path = tmp_path / "cal.json"
    result = runner.invoke(
        app, ["calibrate", "strawberry", "--policy", "aligned", "--episodes", "40", "--alpha", "0.1",
              "--detectors", "cusum,envelope", "-o", str(cal_path)],
    )
    assert result.exit_code == 0, result.output
    cal = Calibration.load(cal_path)
    assert cal.scenario == "strawberry" and set(cal.detectors) == {"cusum", "envelope"} and cal.n_cal == 20
    result = runner.invoke(
        app, ["deploy", "strawberry", "--calibration", str(cal_path), "--policy", "misaligned",
              "--detectors", "cusum,envelope", "--episodes", "10"],
    )
    assert result.exit_code == 0, result.output
    table = json.loads((tmp_path / "deploy.json").read_text())
    assert [r["detectors"] for r in table["rows"]] == ["cusum", "envelope", "cusum+envelope"]
    joint = table["rows"][-1]
    # the scripted misaligned policy harms a nose in deployment: the guard must see it
    assert joint["detection"]["rate"]["k"] >= 8
    assert joint["catastrophes_guarded"] < joint["catastrophes_free"]
    # and the deployment monitor over the 10 deploy runs raises its alarm within them
    assert joint["deployment_alarm"] is not None and 1 <= joint["deployment_alarm"]["episode"] <= 10


def test_calibrate_records_the_joint_rule_chosen(tmp_path):
    cal_path = tmp_path / "cal.json"
    result = runner.invoke(
        app, ["calibrate", "strawberry", "--policy", "aligned", "--episodes", "40", "--alpha", "0.1",
              "--detectors", "cusum,rank", "--match", "quantiles", "-o", str(cal_path)],
    )
    assert result.exit_code == 0, result.output
    assert Calibration.load(cal_path).match == "quantiles"  # an unknown --match: test_cli_errors.py



def test_the_commands_default_detectors_and_rule_are_the_calibrations_default():
    from mesaguard.cli.base import ALL, MATCH
    from mesaguard.detectors import DEFAULT
    from mesaguard.matching import DEFAULT_MATCH

    assert ALL.split(",") == list(DEFAULT) and MATCH == DEFAULT_MATCH
