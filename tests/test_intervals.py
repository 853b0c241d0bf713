"""The t quantile of pipeline.analysis.intervals against scipy's."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from pipeline.analysis.intervals import SERIES_MAX_DF, t_interval, t_quantile

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999)


@pytest.mark.parametrize("level", LEVELS)
def test_t_quantile_is_scipys_for_every_small_df(level):
    df = np.arange(1, 301)
    ours = np.array([t_quantile(level, int(n)) for n in df])
    np.testing.assert_allclose(ours, stats.t.ppf((1 + level) / 2, df), rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(df=st.integers(1, 3 * SERIES_MAX_DF), level=st.floats(0.05, 0.999))
def test_t_quantile_is_scipys_up_to_and_beyond_the_series(df, level):
    assert t_quantile(level, df) == pytest.approx(stats.t.ppf((1 + level) / 2, df), rel=1e-12)


@pytest.mark.parametrize("df", [SERIES_MAX_DF - 1, SERIES_MAX_DF, SERIES_MAX_DF + 1])
def test_t_quantile_is_continuous_where_scipy_takes_over(df):
    assert t_quantile(0.95, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-12)


def test_t_interval_of_a_large_sample_is_scipys():
    x = np.random.default_rng(3).standard_normal(SERIES_MAX_DF + 5)
    want = stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    np.testing.assert_allclose(t_interval(x), want, rtol=1e-12)
