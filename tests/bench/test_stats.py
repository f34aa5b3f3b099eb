import numpy as np
import pytest

from localllm.bench.stats import percentile, summarize


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101, 1000])
def test_percentiles_match_numpy_linear(n):
    values = np.random.default_rng(n).exponential(size=n).tolist()
    for q in (0, 1, 50, 90, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_known_values():
    values = [4.0, 1.0, 3.0, 2.0]  # order does not matter
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile(range(101), 90) == 90
    assert percentile([7.0], 99) == 7.0


def test_summarize_scales_and_orders():
    s = summarize([0.1, 0.2, 0.3, 0.4, 1.0], scale=1000)
    assert s["n"] == 5
    assert s["mean"] == pytest.approx(400.0)
    assert s["p50"] == pytest.approx(300.0)
    assert s["min"] == pytest.approx(100.0) and s["max"] == pytest.approx(1000.0)
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["max"]
    assert s["p90"] == pytest.approx(760.0)  # 0.4 + 0.6 * (1.0 - 0.4), in ms


def test_summarize_empty_and_generators():
    assert summarize([]) == {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None}
    assert summarize(x for x in [2.0, 4.0])["mean"] == 3.0


def test_bad_input():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)
