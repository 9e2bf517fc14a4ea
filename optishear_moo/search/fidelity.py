"""Multi-fidelity searches: cheaper early generations, and re-scoring the front at full fidelity."""

from __future__ import annotations

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.callback import Callback
from pymoo.core.problem import Problem
from pymoo.core.result import Result

from .runner import front_arrays


class FidelitySchedule(Callback):
    """Cheaper early generations: the problem's forward objectives use ``low`` of the
    calibration samples until ``until_generation`` generations are done, then all of them.

    Scores from the two fidelities are compared during selection, so re-score the final front
    with :func:`reevaluate_at_full_fidelity`. Like any callback it is not checkpointed: pass it
    again when resuming.
    """

    def __init__(self, low: float = 0.25, until_generation: int = 3):
        super().__init__()
        if not 0 < low <= 1:
            raise ValueError(f"low fidelity must be in (0, 1], got {low}")
        self.low, self.until_generation = low, until_generation

    def notify(self, algorithm: Algorithm) -> None:
        # called at the end of generation n_iter, before pymoo counts on to the next one
        low = algorithm.n_iter + 1 <= self.until_generation
        algorithm.problem.fidelity = self.low if low else 1.0

    def initialize(self, algorithm: Algorithm) -> None:
        algorithm.problem.fidelity = self.low if self.until_generation > 0 else 1.0


def reevaluate_at_full_fidelity(problem: Problem, result: Result) -> np.ndarray:
    """The result's optimum re-scored on all calibration samples (sets ``result.F`` too)."""
    problem.fidelity = 1.0
    X, _ = front_arrays(result)
    F = problem.evaluate(X, return_values_of=["F"])
    result.F = F if np.ndim(result.F) == 2 else F[:, 0]
    return F
