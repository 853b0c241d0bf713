"""Statistics of streams too long to hold: the exact median of values that arrive a batch at a time.

``nnsweep estimate`` pools a network's draws batch after batch (pipeline/estimation.py). Its means
need only per-draw sums, which it keeps; a median over every (input, draw) needs the values near the
middle. :class:`StreamMedian` counts the values below and above a bracket and keeps those inside it;
the bracket starts as everything and narrows, as independent units (the draws of one network, or
the networks) arrive, to the values within ``z`` standard errors of rank of the current middle. Its answer is the
median of the whole stream exactly, equal to ``np.median``; when the middle of the stream ends up
outside the bracket (the last draws far from what the first ones said), :meth:`StreamMedian.result`
says so and :meth:`StreamMedian.retry` gives the bracket that holds it for a second pass over the
same stream. The kept values number at most about z n sqrt(units) for n values per unit, against n units
for the whole stream; when the caller says which values make a unit, the median measures how much a
unit's share below the middle varies and keeps several times fewer when the values of a unit do not
all move together.

>>> rng = np.random.default_rng(0)
>>> values = rng.standard_normal((10000, 20))  # 10000 draws of 20 values
>>> med = StreamMedian(values.size, cap=1000)
>>> for batch in np.split(values, 20):
...     med.add(batch, units=len(batch))
>>> bool(med.result() == np.median(values)), med.kept < values.size // 10
(True, True)
"""

from __future__ import annotations

import math

import numpy as np

Z = 6.0  # standard errors of rank kept on each side of the current middle
CAP = 2**16  # values kept before the bracket first narrows
MIN_UNITS = 32  # units counted at one point before their spread is trusted over the bound
ENOUGH_UNITS = 256  # units counted at one point, at most: the spread is known to about 5% by then


class StreamMedian:
    """The median of a stream of ``total`` numbers, exactly, holding those near the middle.

    How far the middle's rank may still move is ``z`` standard errors of the share of a unit's values below it.
    That share varies at most by sqrt(p (1 - p)) (p = 1/2 at the middle) from unit to unit, which holds whatever
    the values. When the caller says which values belong to which unit (``by_unit`` in :meth:`add`), the median
    also counts each unit's share below a point near the middle and uses how much that varies when it is less:
    the design effect, the variance of the share over p (1 - p) at that point, times p (1 - p). A unit's values
    seldom all move together, so the bracket, and what it keeps, shrinks, often several times. The answer is
    exact either way; only the memory and the chance of a second pass depend on the bracket.

    Args:
        total: how many values the stream will have (NaN included).
        lo, hi: a bracket known to hold the middle (from :meth:`retry`); values outside are counted.
        cap: values kept before narrowing (by default CAP); after narrowing, twice what is kept.
        z: the half-width of the bracket in standard errors of rank.
        measured: whether the spread measured from the units may replace the bound (:meth:`retry`
            gives a median that keeps to the bound).
    """

    def __init__(self, total: int, lo: float = -math.inf, hi: float = math.inf, cap: int | None = None,
                 z: float = Z, measured: bool = True):
        self.total, self.lo, self.hi, self.cap, self.z = total, lo, hi, CAP if cap is None else cap, z
        self.ranks = ((total - 1) // 2, total // 2)  # the middle one or two, 0-based (np.median averages two)
        self.below = self.above = self.seen = self.units = 0
        self.parts: list[np.ndarray] = []
        self.kept = 0
        self.nan = False
        self.measured = measured
        self.design_effect = 1.0  # the variance of a unit's share below the middle over p (1 - p)
        self.point: float | None = None  # where the shares are counted: the middle's estimate at a narrowing
        self._counts: np.ndarray | None = None  # per unit of the current batch: its values below the point
        self._per_unit = 0  # values of each unit of the batch so far
        self._sums = [0, 0.0, 0.0]  # units counted at the point, the sum of their shares and of their squares

    def add(self, values: np.ndarray, units: int, nan: bool | None = None, by_unit: bool = False) -> None:
        """The next values of the stream, which complete ``units`` more independent units; ``nan``: whether
        they hold a NaN, when the caller knows.

        ``by_unit``: the first axis of ``values`` runs over the units of a batch, whose values may come in
        several calls, the last of which (``units`` > 0, then the length of that axis) completes them.
        """
        a = np.asarray(values, dtype=np.float64)
        v, b = a.ravel(), a.shape[0] if a.ndim else 1
        if by_unit and units and units != b:
            raise ValueError(f"values of {b} units complete {units}: by_unit needs all of them")
        self.seen += v.size
        self.units += units
        if self.nan or (np.isnan(v).any() if nan is None else nan):  # np.median of anything with a NaN is NaN
            self.nan, self.parts, self.kept = True, [], 0
            return
        if by_unit and self.point is not None:
            self._count(v, b, units)
        if self.lo == -math.inf and self.hi == math.inf:
            inside = v.copy()
        else:
            low = v < self.lo
            mask = v <= self.hi
            mask &= ~low
            inside = v[mask]
            below = int(np.count_nonzero(low))
            self.below += below
            self.above += v.size - inside.size - below
        self.parts.append(inside)
        self.kept += inside.size
        if self.kept > self.cap and units:  # only once whole units are in: a part of one is no fair sample
            self._narrow()

    def _count(self, v: np.ndarray, b: int, units: int) -> None:
        """Each unit's values below the point; their shares, once the units are complete."""
        if self._counts is None:  # a batch begins
            if self._sums[0] >= ENOUGH_UNITS:
                return  # the measure is good enough: spare the counting till the point moves
            self._counts, self._per_unit = np.zeros(b), 0
        self._counts += np.count_nonzero((v < self.point).reshape(b, -1), axis=1)
        self._per_unit += v.size // b
        if units:
            shares = self._counts / self._per_unit
            self._sums = [self._sums[0] + b, self._sums[1] + shares.sum(), self._sums[2] + shares @ shares]
            self._counts = None

    def _measure(self) -> bool:
        """The design effect from the shares counted at the point, when there are enough; whether
        there were. Never below that of independent values, 1 / (values per unit)."""
        n, total, squares = self._sums
        if n < MIN_UNITS:
            return False  # too few units yet: keep the last measure, and go on counting at the same point
        q = total / n
        self._sums = [0, 0.0, 0.0]
        if 0 < q < 1:  # at a point outside every unit's values the shares say nothing
            variance = max(squares - n * q * q, 0.0) / (n - 1)
            self.design_effect = min(1.0, max(variance / (q * (1 - q)), 1 / self._per_unit))
        return True

    def _narrow(self) -> None:
        """Drop the kept values more than z standard errors of rank away from the middle's expected place."""
        kept = self._gathered()
        p = (self.ranks[0] + 0.5) / self.total  # the middle's quantile in the whole stream
        where = p * self.seen  # and its expected rank among the values seen so far
        move = self.measured and (self._measure() or self.point is None)  # count at a new point from now on
        sd = math.sqrt(self.design_effect * p * (1 - p))  # of a unit's share below the middle
        spread = self.z * sd / math.sqrt(max(self.units, 1)) * self.seen + 1
        first = max(0, math.floor(where - spread) - self.below)
        last = min(kept.size - 1, math.ceil(where + spread) - self.below)
        if first > last:  # the middle's expected place is outside what is kept: keep everything, let result() tell
            first, last = 0, kept.size - 1
        # Order statistics in place, one kth at a time: np.partition with several kth is several times slower.
        kept.partition(first)
        lo = kept[first]
        mid = min(max(round(where) - self.below, first), last) if move else first
        if move:  # the middle's estimate, the next point
            kept[first:].partition(mid - first)
            self.point = float(kept[mid])
        kept[mid:].partition(last - mid)
        hi = kept[last]
        # kept[first:last + 1] lies in [lo, hi]; of the rest only ties of lo (before) and of hi (after) do.
        low_ties, high_ties = kept[:first][kept[:first] == lo], kept[last + 1:][kept[last + 1:] == hi]
        inside = np.concatenate([low_ties, kept[first:last + 1], high_ties])  # a copy: kept is let go
        self.below += first - low_ties.size
        self.above += kept.size - last - 1 - high_ties.size
        self.lo, self.hi = max(self.lo, lo), min(self.hi, hi)
        self.parts, self.kept = [inside], inside.size
        self.cap = max(self.cap, 2 * inside.size)

    def _gathered(self) -> np.ndarray:
        """The kept values as one array of this median's own, free to be reordered in place."""
        return self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)

    def result(self) -> float | None:
        """The median of the whole stream, or None when its middle fell outside the bracket (see retry)."""
        if self.seen != self.total:
            raise ValueError(f"the stream has {self.seen} values, not the {self.total} announced")
        if self.nan:
            return math.nan
        first, last = (r - self.below for r in self.ranks)
        if first < 0 or last >= self.kept:
            return None
        kept = self._gathered()
        kept.partition(first)
        # the next order statistic is the least of those above: a min, cheaper than a partition with two kth
        middle = np.array([kept[first]] if first == last else [kept[first], kept[first + 1:].min()])
        return float(np.mean(middle))  # as np.median takes the mean of the middle one or two

    def retry(self) -> StreamMedian:
        """A fresh median of the same stream whose bracket holds its middle, with a wider ``z`` and the bound
        on the spread (what was measured let the middle out once)."""
        first, last = self.ranks
        lo, hi = self.lo, self.hi
        if first < self.below:  # somewhere below the bracket
            lo, hi = -math.inf, np.nextafter(self.lo, -math.inf)
        elif last >= self.below + self.kept:
            lo, hi = np.nextafter(self.hi, math.inf), math.inf
        if first < self.below <= last or first < self.below + self.kept <= last:
            lo, hi = -math.inf, math.inf  # the two middle values straddle an edge: keep it simple
        return StreamMedian(self.total, lo, hi, self.cap, 2 * self.z, measured=False)
