"""Progress bars for the library's long calls (rollouts, calibration fits), on stderr and only on a terminal.

A call that takes ``progress=True`` shows a bar while it works; where stderr is not
a terminal (CI logs, pipes, notebooks capturing output) or ``progress=False``, the
bar is a no-op, so scripts and tests print nothing they did not ask for.

>>> with bar("episodes", total=3, enabled=False) as advance:
...     for _ in range(3):
...         advance()
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["bar", "shown"]


def shown(enabled: bool = True) -> bool:
    """Whether a bar would be drawn: ``enabled`` and stderr is a terminal."""
    return bool(enabled) and sys.stderr.isatty()


@contextmanager
def bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A bar of ``total`` items; yields ``advance(*_)``, called once per finished item (any arguments ignored,
    so it serves as an ``on_episode`` or ``on_detector`` callback). The bar goes away when done."""
    if not shown(enabled):
        yield lambda *_: None
        return
    from rich.console import Console  # rich loads only where a bar is drawn
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda *_: progress.advance(task)
