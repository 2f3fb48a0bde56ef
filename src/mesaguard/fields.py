"""Checked reads of a received file's JSON fields: every error names the file, the field, the value, the expectation.

A file a user may receive from others is hostile until checked (DESIGN.md, fail
closed). :class:`Fields` wraps one JSON object and reads each field as what it must
be (a finite number, a positive integer, a shape...), raising the artifact's own
error class with one line that a CLI prints as it is.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

__all__ = ["Fields", "show"]


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: how an error message shows a value from a file."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Fields:
    """Checked reads of one JSON object's fields: each error names the file, the field, the value, the expectation.

    >>> f = Fields({"scale": 0.0, "n": "3"}, "cal.json", ValueError)
    >>> f.number("scale", positive=True)
    Traceback (most recent call last):
    ...
    ValueError: cal.json: field scale is 0.0; expected a finite number > 0
    >>> f.integer("n")
    Traceback (most recent call last):
    ...
    ValueError: cal.json: field n is '3'; expected an integer
    """

    def __init__(self, data: Any, source: str, error: type[ValueError], path: str = "") -> None:
        self.source, self.error, self.path = source, error, path
        if not isinstance(data, dict):
            raise error(f"{source}: field {path or '(the whole file)'} is {show(data)}; expected a JSON object")
        self.data: dict[str, Any] = data

    def where(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str | int, value: Any, expected: str) -> NoReturn:
        raise self.error(f"{self.source}: field {self.where(key)} is {show(value)}; expected {expected}")

    def get(self, key: str) -> Any:
        if key not in self.data:
            raise self.error(f"{self.source}: field {self.where(key)} is missing")
        return self.data[key]

    def object(self, key: str) -> Fields:
        return Fields(self.get(key), self.source, self.error, self.where(key))

    def text(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str):
            self.fail(key, value, "a string")
        return value

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            self.fail(key, value, "true or false")
        return value

    def integer(self, key: str, minimum: int | None = None, maximum: int | None = None, because: str = "") -> int:
        value = self.get(key)
        ok = type(value) is int and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
        if not ok:
            self.fail(key, value, "an integer" + _bounds(minimum, maximum) + because)
        return int(value)

    def shape(self, key: str, optional: bool = False, scalar: bool = False) -> tuple[int, ...] | None:
        """An array shape: a list of positive integers, non-empty unless ``scalar`` (``optional``: or null)."""
        value = self.get(key)
        if value is None and optional:
            return None
        if not (isinstance(value, list) and (value or scalar) and all(type(s) is int and s > 0 for s in value)):
            what = "a list of positive integers" if scalar else "a non-empty list of positive integers"
            self.fail(key, value, what + (" or null" if optional else ""))
        return tuple(value)

    def number(self, key: str, positive: bool = False, lo: float | None = None, hi: float | None = None,
               nonnegative: bool = False) -> float:
        """A finite JSON number (``positive``: > 0; ``nonnegative``: >= 0; ``lo``/``hi``: strict bounds);
        a string such as ``"nan"`` is refused."""
        return self.check_number(key, self.get(key), positive, lo, hi, nonnegative)

    def check_number(self, key: str | int, value: Any, positive: bool = False,
                     lo: float | None = None, hi: float | None = None, nonnegative: bool = False) -> float:
        """``value`` (field ``key``) as a float, if it is a finite JSON number within the bounds; else the error."""
        lo = 0.0 if positive else lo
        ok = (type(value) is float or type(value) is int) and math.isfinite(value)
        if not (ok and (lo is None or value > lo) and (hi is None or value < hi) and not (nonnegative and value < 0)):
            if nonnegative:
                expected = "a finite number >= 0"
            elif lo is not None and hi is not None:
                expected = f"a finite number strictly between {lo:g} and {hi:g}"
            elif lo is not None or hi is not None:
                expected = f"a finite number > {lo:g}" if lo is not None else f"a finite number < {hi:g}"
            else:
                expected = "a finite number"
            self.fail(key, value, expected)
        return float(value)

    def numbers(self, key: str, length: int | None = None, positive: bool = False, because: str = "") -> list[float]:
        """A list of finite numbers (``length`` of them, when given; ``because`` says why that many)."""
        value = self.get(key)
        if not isinstance(value, list):
            self.fail(key, value, "a list of finite numbers")
        if length is not None and len(value) != length:
            raise self.error(
                f"{self.source}: field {self.where(key)} holds {len(value)} values; expected {length}{because}"
            )
        inner = Fields({}, self.source, self.error, self.where(key))
        return [inner.check_number(i, v, positive) for i, v in enumerate(value)]


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    return f" <= {maximum}" if maximum is not None else ""
