"""One self-contained HTML report of a bench run: the tables, and plots to read at a glance instead of logs.

Everything is recomputed from the store (nothing is rolled out, no scenario registry
is needed), and the file opens offline with plotly.js embedded once. One concept
per module:

=====================  ====================================================================
:mod:`.page`           :func:`build_report`, :func:`write_report`: the page and its sections
:mod:`.tables`         the results tables (detectors, safeguards) and the deployment table
:mod:`.deficit`        the score's deficit against in-distribution runs, per step
:mod:`.evidence`       the deployment monitor's evidence over episodes, against its threshold
:mod:`.tradeoff`       detection delay against false-alarm rate as alpha varies
:mod:`.decimate`       a bounded number of points per trace, every bucket's min and max kept
:mod:`.labels`         alphas and detector configurations as people read them
:mod:`.plotlyjs`       the vendored plotly.js basic bundle
=====================  ====================================================================
"""

from __future__ import annotations

from mesaguard.report.page import ALPHAS, build_report, write_report
from mesaguard.report.tables import results_table as _results_table  # noqa: F401  (tests use it)

__all__ = ["ALPHAS", "build_report", "write_report"]
