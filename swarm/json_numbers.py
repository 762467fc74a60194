"""`Bounds` on a JSON number (`minimum`, `maximum` and their exclusive forms), and whether
the beginning of a number can still end within them. Pure.

JSON mode writes a bounded number without an exponent (`-?(0|[1-9]\\d*)(\\.\\d+)?`), so what
a beginning may still become is simple: its digits so far fix an interval of values, or, for
the integer digits, one interval for each count of digits still to come. Values are
`Fraction`s, exact however many digits a number has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["Bounds"]


@dataclass(frozen=True)
class Bounds:
    """The values from `low` to `high` (None: no bound), each end left out if `open`."""

    low: Fraction | None = None
    high: Fraction | None = None
    low_open: bool = False
    high_open: bool = False

    @property
    def empty(self) -> bool:
        """Whether no value lies within the bounds (they are not consistent)."""
        if self.low is None or self.high is None:
            return False
        return self.low > self.high or (self.low == self.high and (self.low_open or self.high_open))

    def value_count(self, integer: bool) -> int | None:
        """How many values (integers, if `integer`) lie within the bounds (None: endless)."""
        if self.low is None:
            return None
        if integer:
            return self.integers_between(self.low, None)
        return 1 if self.low == self.high else None

    def integers_from(self, text: str) -> int | None:
        """How many integers within the bounds have a JSON text that begins `text`, the
        beginning of an integer (None: endless)."""
        if text.startswith("-"):  # the magnitudes, within the bounds mirrored
            return self.mirrored().integers_from(text[1:])
        if not text:
            return self.integers_between(Fraction(0), None)
        if text == "0":
            return self.integers_between(Fraction(0), Fraction(1))
        if self.high is None:
            return None
        leading, count, more = int(text), 0, 0
        while leading * 10**more <= self.high:
            scale = 10**more
            count += (
                self.integers_between(Fraction(leading * scale), Fraction((leading + 1) * scale))
                or 0
            )
            more += 1
        return count

    def holds(self, value: Fraction) -> bool:
        """Whether `value` lies within the bounds."""
        return self.over_low(value) and self.under_high(value)

    def over_low(self, value: Fraction) -> bool:
        if self.low is None:
            return True
        return value > self.low or (value == self.low and not self.low_open)

    def under_high(self, value: Fraction) -> bool:
        if self.high is None:
            return True
        return value < self.high or (value == self.high and not self.high_open)

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
        return self.digits_to_come(int(whole), integer)

    def digits_to_come(self, leading: int, integer: bool) -> bool:
        """Whether integer digits `leading` and m more, the values from leading * 10^m up
        to (leading + 1) * 10^m, meet the bounds for some m. The intervals grow with m:
        those with fewer digits than `low` lie below it, and once one begins above `high`,
        so do all the rest."""
        more = 0
        if self.low is not None and self.low > 0:
            more = max(0, len(str(math.floor(self.low))) - len(str(leading)) - 1)
        while True:
            least = Fraction(leading * 10**more)
            if self.meets(least, Fraction((leading + 1) * 10**more), integer):
                return True
            if not self.under_high(least):
                return False
            more += 1

    def meets(self, least: Fraction, beyond: Fraction | None, integer: bool) -> bool:
        """Whether a value from `least` up to (not including) `beyond` (None: unbounded),
        an integer if `integer`, lies within the bounds (which are not `empty`). Decimals
        are dense, so an interval that overlaps the bounds holds a value within them."""
        if integer:
            count = self.integers_between(least, beyond)
            return count is None or count > 0
        low_below = beyond is None or self.low is None or self.low < beyond
        return low_below and self.under_high(least)

    def integers_between(self, least: Fraction, beyond: Fraction | None) -> int | None:
        """How many integers from `least` up to (not including) `beyond` (None: unbounded)
        lie within the bounds (None: endless)."""
        top = None if beyond is None else math.ceil(beyond) - 1
        if self.low is not None:
            least = max(least, _integer_above(self.low, self.low_open))
        if self.high is not None:
            high = math.floor(-_integer_above(-self.high, self.high_open))
            top = high if top is None else min(top, high)
        return None if top is None else max(0, top - math.ceil(least) + 1)

    def mirrored(self) -> Bounds:
        """The bounds of -x, for x within these."""
        return Bounds(
            None if self.high is None else -self.high,
            None if self.low is None else -self.low,
            self.high_open,
            self.low_open,
        )


def _integer_above(value: Fraction, open_: bool) -> Fraction:
    """The least integer at or above `value` (above it, if `open_`)."""
    least = Fraction(math.ceil(value))
    return least + 1 if open_ and least == value else least
