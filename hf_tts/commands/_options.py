"""argparse `type=` factories for numeric options: a value that is not a finite number in range is refused by the
parser itself (one line, exit 2) before any file is read or model loaded."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def bounded_float(
    low: float | None,
    high: float | None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Callable[[str], float]:
    """A parser of finite floats in [low, high] (None: unbounded on that side; `*_inclusive=False`: open end)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        too_low = low is not None and (value < low if low_inclusive else value <= low)
        too_high = high is not None and (value > high if high_inclusive else value >= high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is outside {_describe(low, high, low_inclusive, high_inclusive)}")
        return value

    parse.__name__ = "number"  # argparse names the type in its message: "invalid number value"
    return parse


def bounded_int(low: int | None, high: int | None) -> Callable[[str], int]:
    """A parser of integers in [low, high] (None: unbounded on that side)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is outside {_describe(low, high, True, True)}")
        return value

    parse.__name__ = "integer"
    return parse


def _describe(low: float | None, high: float | None, low_inclusive: bool, high_inclusive: bool) -> str:
    if low is None:
        return f"the allowed range (at most {high})" if high_inclusive else f"the allowed range (below {high})"
    if high is None:
        return f"the allowed range (at least {low})" if low_inclusive else f"the allowed range (above {low})"
    return f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
