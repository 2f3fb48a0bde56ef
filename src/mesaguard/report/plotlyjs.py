"""The one copy of plotly.js a report embeds: plotly.js's *basic* bundle, shipped with the package.

plotly.py ships only the full plotly.js bundle (about 4.8 MB: maps, 3-D, finance ...).
A report draws scatter traces only, so it embeds the basic bundle (scatter, bar and
pie traces; about 1.2 MB), vendored unchanged from the npm package
``plotly.js-basic-dist-min`` at the version plotly.py's own bundle has
(:data:`VERSION`; ``tests/test_report.py`` holds them equal, so figures written by
plotly.py are drawn by the plotly.js they were written for). Its license is
``plotly-basic.LICENSE`` beside it (MIT).

>>> script().startswith("/**\\n* plotly.js (basic - minified) v" + VERSION)
True
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["BUNDLE", "VERSION", "script"]

BUNDLE = Path(__file__).with_name("plotly-basic.min.js")
VERSION = "4.1.1"  # the npm package's version: update it with the file


@functools.cache
def script() -> str:
    """The bundle's text, to inline in one ``<script>`` element per page (it holds no ``</script>``)."""
    text = BUNDLE.read_text(encoding="utf-8")
    if "</script" in text.lower():  # inlined, it would end the element early: refuse rather than write a broken page
        raise ValueError(f"{BUNDLE} holds '</script': it cannot be inlined in a report")
    return text
