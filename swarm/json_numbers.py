"""`Bounds` on a JSON number (`minimum`, `maximum`, their exclusive forms, `multipleOf`), and
whether the beginning of a number can still end within them. Pure.

JSON mode writes a bounded number without an exponent (`-?(0|[1-9]\\d*)(\\.\\d+)?`), so what
a beginning may still become is simple: its digits so far fix an interval of values, or, for
the integer digits, one interval for each count of digits still to come. Within an interval,
the values allowed are either dense (any decimal) or a grid (integers, multiples of a step),
which can be counted. Values are `Fraction`s, exact however many digits a number has.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["Bounds"]


@dataclass(frozen=True)
class Bounds:
    """The values from `low` to `high` (None: no bound), each end left out if `open`, and
    multiples of `step` if it is set."""

    low: Fraction | None = None
    high: Fraction | None = None
    low_open: bool = False
    high_open: bool = False
    step: Fraction | None = None

    @property
    def empty(self) -> bool:
        """Whether the ends leave no value between them (they are not consistent)."""
        if self.low is None or self.high is None:
            return False
        return self.low > self.high or (self.low == self.high and (self.low_open or self.high_open))

    def grid(self, integer: bool) -> Fraction | None:
        """The spacing of the values allowed (None: any decimal). An integer multiple of
        p/q (in lowest terms) is a multiple of p."""
        if self.step is None:
            return Fraction(1) if integer else None
        return Fraction(self.step.numerator) if integer else self.step

    def holds(self, value: Fraction) -> bool:
        """Whether `value` lies within the bounds."""
        on_grid = self.step is None or (value / self.step).denominator == 1
        return on_grid and self.over_low(value) and self.under_high(value)

    def over_low(self, value: Fraction) -> bool:
        if self.low is None:
            return True
        return value > self.low or (value == self.low and not self.low_open)

    def under_high(self, value: Fraction) -> bool:
        if self.high is None:
            return True
        return value < self.high or (value == self.high and not self.high_open)

    def value_count(self, integer: bool) -> int | None:
        """How many values (integers, if `integer`) lie within the bounds (None: endless)."""
        grid = self.grid(integer)
        if self.low is None:
            return None
        if grid is None:
            return 1 if self.low == self.high else None
        return self.count(self.low, None, grid)

    def may_reach(self, text: str, integer: bool) -> bool:
        """Whether a number that begins `text` (no exponent; `integer`: no fraction either)
        may end within the bounds."""
        if text.startswith("-"):  # the magnitude, within the bounds mirrored
            return self.mirrored().may_reach(text[1:], integer)
        whole, dot, fraction = text.partition(".")
        if dot:  # more digits add less than one unit of the last digit so far
            least = Fraction(f"{whole}.{fraction}" if fraction else whole)
            return self.meets(least, least + Fraction(1, 10 ** len(fraction)), integer)
        if not whole:  # a minus sign alone: any magnitude
            return self.meets(Fraction(0), None, integer)
        if whole == "0":
            return self.meets(Fraction(0), Fraction(1), integer)
        return any(self.meets(*interval, integer) for interval in self.digit_intervals(int(whole)))

    def digit_intervals(self, leading: int) -> Iterator[tuple[Fraction, Fraction]]:
        """The values that integer digits `leading` and m more make, from leading * 10^m up
        to (leading + 1) * 10^m, for each m whose interval may meet the bounds. The intervals
        grow with m: those with fewer digits than `low` lie below it (skipped), and once one
        begins above `high`, so do all the rest (none after it; endless without `high`)."""
        more = 0
        if self.low is not None and self.low > 0:
            more = max(0, len(str(math.floor(self.low))) - len(str(leading)) - 1)
        while self.under_high(least := Fraction(leading * 10**more)):
            yield least, Fraction((leading + 1) * 10**more)
            more += 1

    def integers_from(self, text: str) -> int | None:
        """How many integers within the bounds have a JSON text that begins `text`, the
        beginning of an integer (None: endless)."""
        if text.startswith("-"):  # the magnitudes, within the bounds mirrored
            return self.mirrored().integers_from(text[1:])
        grid = self.grid(integer=True) or Fraction(1)
        if not text:
            return self.count(Fraction(0), None, grid)
        if text == "0":
            return self.count(Fraction(0), Fraction(1), grid)
        if self.high is None:
            return None
        return sum(self.count(*interval, grid) or 0 for interval in self.digit_intervals(int(text)))

    def meets(self, least: Fraction, beyond: Fraction | None, integer: bool) -> bool:
        """Whether a value from `least` up to (not including) `beyond` (None: unbounded),
        an integer if `integer`, lies within the bounds (whose ends are not `empty`).
        Decimals are dense, so an interval that overlaps the ends holds a value within."""
        grid = self.grid(integer)
        if grid is not None:
            count = self.count(least, beyond, grid)
            return count is None or count > 0
        low_below = beyond is None or self.low is None or self.low < beyond
        return low_below and self.under_high(least)

    def count(self, least: Fraction, beyond: Fraction | None, grid: Fraction) -> int | None:
        """How many multiples of `grid` from `least` up to (not including) `beyond` (None:
        unbounded) lie within the ends (None: endless)."""
        low, low_open = least, False
        if self.low is not None and (self.low > low or (self.low == low and self.low_open)):
            low, low_open = self.low, self.low_open
        high, high_open = beyond, True
        if self.high is not None and (high is None or self.high < high):
            high, high_open = self.high, self.high_open
        if high is None:
            return None
        first, last = math.ceil(low / grid), math.floor(high / grid)
        first += low_open and first * grid == low
        last -= high_open and last * grid == high
        return max(0, last - first + 1)

    def mirrored(self) -> Bounds:
        """The bounds of -x, for x within these."""
        return Bounds(
            None if self.high is None else -self.high,
            None if self.low is None else -self.low,
            self.high_open,
            self.low_open,
            self.step,
        )
