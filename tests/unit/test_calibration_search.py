"""The calibration's derivative-free search: it finds a minimum inside the bounds, stops at a bound when
the minimum lies beyond it, and copes with a staircase that defeats finite differences."""

from __future__ import annotations

import math

import numpy as np

from backends.twin.calibration import _HIGH, _LOW, _nelder_mead


def _search(cost, x0: np.ndarray, evaluations: int = 400) -> tuple[float, np.ndarray]:
    best: list[tuple[float, np.ndarray]] = []

    def tracked(x: np.ndarray) -> float:
        f = cost(x)
        if not best or f < best[0][0]:
            best[:] = [(f, x.copy())]
        return f

    _nelder_mead(tracked, x0, evaluations)
    return best[0]


def test_finds_an_interior_minimum() -> None:
    target = np.array([math.log(3.0), 0.2, math.log(0.8), -0.1])
    f, x = _search(lambda x: float(np.sum((x - target) ** 2)), np.zeros(4))
    assert f < 1e-5 and np.allclose(x, target, atol=5e-3)


def test_stays_inside_the_bounds() -> None:
    beyond = _HIGH + 1.0  # every scale's optimum lies past its upper bound
    _, x = _search(lambda x: float(np.sum((x - beyond) ** 2)), np.zeros(4))
    assert np.all(x <= _HIGH + 1e-12) and np.all(x >= _LOW - 1e-12)
    assert np.allclose(x, _HIGH, atol=1e-2)


def test_descends_a_staircase() -> None:
    # A percentile of a few dozen requests moves in steps: the cost is flat between them.
    target = np.array([1.1, 0.0, -0.22, 0.0])
    f, x = _search(lambda x: float(np.sum(np.round((x - target) * 50) ** 2)), np.zeros(4))
    assert f == 0.0 and np.all(np.abs(x - target) <= 0.011)
