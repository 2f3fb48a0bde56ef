"""The README and the pages under docs/: generated tables agree with benchmarks/results, links resolve,
and the README's quick start runs as written."""

from __future__ import annotations

import doctest
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPEC = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
assert SPEC is not None and SPEC.loader is not None
build = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(build)


def test_build_doctests() -> None:
    assert doctest.testmod(build).failed == 0


@pytest.mark.parametrize("page", build.pages())
def test_committed_page_agrees_with_the_results(page: str) -> None:
    text = (ROOT / page).read_text()
    assert build.render(text, page) == text, f"{page} is stale: run python docs/build.py"


def test_every_table_is_on_a_page_and_every_results_file_is_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    used = {m["name"] for page in build.pages() for m in build.BLOCK.finditer((ROOT / page).read_text())}
    assert used == set(build.TABLES)
    read: set[str] = set()
    real = build.results
    monkeypatch.setattr(build, "results", lambda name: read.add(name) or real(name))
    for table in build.TABLES.values():
        table()
    assert read == {p.stem for p in build.RESULTS.glob("*.json")}


def test_a_changed_result_makes_the_page_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    prevention = json.loads((build.RESULTS / "prevention.json").read_text())
    prevention["scenarios"]["lava"]["rows"]["shield[copy]"]["summary"]["catastrophes_per_1000"] = 1.0
    real = build.results
    monkeypatch.setattr(build, "results", lambda name: prevention if name == "prevention" else real(name))
    text = (ROOT / "README.md").read_text()
    rendered = build.render(text, "README.md")
    assert rendered != text
    assert "| lava | shield[copy] (oracle) | 655 -> 1 |" in rendered


def test_an_unknown_table_is_an_error_naming_the_page() -> None:
    with pytest.raises(KeyError, match="page.md: unknown generated table 'nope'"):
        build.render("<!-- generated: nope -->\n<!-- end generated -->", "page.md")


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown page."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", build.pages())
def test_relative_links_and_anchors_resolve(page: str) -> None:
    path = ROOT / page
    for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", path.read_text()):
        if "://" in target:
            continue
        linked = path.parent / target if target else path
        assert linked.exists(), f"{page}: broken link {target}"
        if anchor:
            assert anchor in _anchors(linked), f"{page}: no heading for #{anchor} in {target or page}"


def test_readme_keeps_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme


def test_readme_quick_start_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    exec(compile(code[1], "README.md quick start", "exec"), namespace)  # noqa: S102 - the README's own code
    report = namespace["info"]["mesaguard"]
    assert report["alarm"] is False and report["detector"] is None
    assert (tmp_path / "runs" / "strawberry" / "calibration.json").exists()
    calm, shifted = namespace["calm"], namespace["shifted"]  # the one-call evaluation, single and vector env
    assert calm.false_alarm_rate.n == shifted.detection_rate.n == 100 and shifted.num_envs == 8
    assert shifted.detection_rate.low > calm.false_alarm_rate.high  # the shift is seen, beyond the false alarms
