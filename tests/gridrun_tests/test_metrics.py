import math

import pytest

from gridrun.metrics import forget_delta, pareto_front, penalized


def test_forget_delta_is_relative_rise() -> None:
    assert forget_delta(1.2, 1.0) == pytest.approx(0.2)
    assert forget_delta(0.9, 1.0) == pytest.approx(-0.1)
    with pytest.raises(ValueError):
        forget_delta(1.0, 0.0)


def test_penalized_charges_only_forgetting() -> None:
    assert penalized(0.8, 0.2, 1.0) == pytest.approx(0.6)
    assert penalized(0.8, -0.3, 1.0) == pytest.approx(0.8)  # improving on base earns nothing extra
    assert penalized(0.8, 0.2, 0.0) == pytest.approx(0.8)
    assert penalized(2.0, 0.5, 2.0, direction="min") == pytest.approx(-3.0)
    with pytest.raises(ValueError):
        penalized(1, 0, 1, direction="up")


def test_pareto_front() -> None:
    pts = [(0.9, 0.5), (0.8, 0.1), (0.7, 0.2), (0.9, 0.6), (0.1, 0.0), (math.nan, 0.0)]
    assert pareto_front(pts) == [0, 1, 4]
    assert pareto_front([(0.5, 0.5), (0.5, 0.5)]) == [0, 1]  # ties do not dominate each other
    assert pareto_front([]) == []
