"""pipeline/pooling.py: the exact median of a stream kept in bounded memory, against np.median."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.pooling import StreamMedian


def stream_median(values: np.ndarray, batch: int, cap: int) -> tuple[float, int, int]:
    """The median of ``values`` (draws, n) fed ``batch`` draws at a time, retrying as it says;
    with the passes taken and the most values kept in any."""
    med, passes, kept = StreamMedian(values.size, cap=cap), 0, 0
    while True:
        for s in range(0, len(values), batch):
            med.add(values[s:s + batch], units=len(values[s:s + batch]))
            kept = max(kept, med.kept)
        passes += 1
        if (answer := med.result()) is not None:
            return answer, passes, kept
        med = med.retry()


@pytest.mark.parametrize("draws, n, batch", [(1, 1, 1), (2, 1, 1), (7, 3, 2), (400, 30, 7), (3000, 20, 64)])
@pytest.mark.parametrize("kind", ["spread", "narrow", "ties"])
def test_stream_median_is_numpys(draws, n, batch, kind):
    """Odd and even counts, one value, many equal values: exactly np.median, in one pass."""
    rng = np.random.default_rng(draws + n)
    inputs = rng.standard_normal(n) * 3  # each column is one input, its own centre
    values = inputs + rng.standard_normal((draws, n)) * (0.01 if kind == "narrow" else 1.0)
    if kind == "ties":
        values = np.round(values)
    answer, passes, kept = stream_median(values, batch, cap=100)
    assert answer == np.median(values) and passes == 1
    if draws >= 3000 and kind != "ties":  # the bracket narrowed: a fraction of the stream was ever held
        assert kept < values.size // 4


def test_a_drift_takes_a_second_pass_and_stays_exact():
    """The last draws far from the first ones: the first bracket misses the middle, a later pass finds it."""
    rng = np.random.default_rng(5)
    values = rng.standard_normal((2000, 10))
    values[1200:] += 4.0
    answer, passes, _ = stream_median(values, 50, cap=100)
    assert answer == np.median(values) and passes >= 2


def test_a_nan_makes_the_median_nan():
    med = StreamMedian(6)
    med.add(np.array([1.0, 2.0, 3.0]), units=1)
    med.add(np.array([np.nan, 2.0, 3.0]), units=1)
    assert np.isnan(med.result()) and np.isnan(np.median([1.0, 2.0, 3.0, np.nan, 2.0, 3.0]))


def test_a_stream_shorter_or_longer_than_announced_is_refused():
    med = StreamMedian(4)
    med.add(np.arange(3.0), units=3)
    with pytest.raises(ValueError, match="3 values, not the 4"):
        med.result()


def by_unit_median(values: np.ndarray, batch: int, cap: int, by_unit: bool = True) -> tuple[float, int, int]:
    """As :func:`stream_median`, for ``values`` (draws, cells, n) fed as ``nnsweep estimate`` feeds a group
    of cells: a batch of draws cell by cell, (draws, n) each, the last cell completing the batch's units."""
    med, passes, kept = StreamMedian(values.size, cap=cap), 0, 0
    while True:
        for s in range(0, len(values), batch):
            part = values[s:s + batch]
            for c in range(part.shape[1]):
                last = c == part.shape[1] - 1
                med.add(part[:, c], units=len(part) if last else 0, by_unit=by_unit)
            kept = max(kept, med.kept)
        passes += 1
        if (answer := med.result()) is not None:
            return answer, passes, kept
        med = med.retry()


@pytest.mark.parametrize("kind", ["independent", "shared", "clusters", "ties", "mixed"])
@pytest.mark.parametrize("batch", [1, 40])
def test_a_median_measuring_its_units_is_numpys(kind, batch):
    """Told which values make a unit, the median measures how much a unit's share below its middle
    varies: exactly np.median in one pass whether a unit's values move together or not; fewer values
    kept than under the bound when they do not."""
    rng = np.random.default_rng(len(kind) + batch)
    draws, cells, n = 2000, 3, 30
    noise = rng.standard_normal((draws, cells, n))
    values = {"independent": noise,
              "shared": noise * 0.1 + rng.standard_normal((draws, 1, 1)),  # each draw moves all its values
              "clusters": rng.integers(0, 5, (1, cells, n)) * 10 + noise * 0.01,  # far-apart groups of inputs
              "ties": np.round(noise + rng.standard_normal((draws, 1, 1))),
              "mixed": noise * np.exp(rng.standard_normal((draws, 1, 1))) + np.arange(cells)[:, None]}[kind]
    answer, passes, kept = by_unit_median(values, batch, cap=500)
    assert answer == np.median(values) and passes == 1
    _, _, bound_kept = by_unit_median(values, batch, cap=500, by_unit=False)
    assert kept <= bound_kept
    if kind == "independent" and batch > 1:  # the draws' shares barely vary: a fraction of the bound's bracket
        assert kept < bound_kept / 4


def test_a_measuring_median_that_drifts_takes_a_second_pass_and_stays_exact():
    rng = np.random.default_rng(7)
    values = rng.standard_normal((2000, 2, 10))
    values[1200:] += 4.0
    answer, passes, _ = by_unit_median(values, 50, cap=100)
    assert answer == np.median(values) and passes >= 2


def test_units_must_be_whole_when_counted_by_unit():
    med = StreamMedian(40, lo=-1.0, hi=1.0)
    with pytest.raises(ValueError, match="values of 4 units complete 3"):
        med.add(np.zeros((4, 10)), units=3, by_unit=True)
