
import numpy as np
import pytest

from optishear_moo import OptiShearProblem
from optishear_moo.search import SearchRun, make_algorithm, run_search


def test_fidelity_schedule_uses_fewer_samples_early_and_front_is_rescored(tiny_llama, calibration):
    from optishear_moo.search import FidelitySchedule, reevaluate_at_full_fidelity

    problem = OptiShearProblem(tiny_llama, calibration, 0.5, objectives=("kl",), batch_size=4)
    x = problem.encode()
    full = problem.evaluate(x[None], return_values_of=["F"])[0, 0]
    problem.fidelity = 0.5  # 3 of the 6 samples: a different (cheaper) estimate
    half = problem.evaluate(x[None], return_values_of=["F"])[0, 0]
    assert half != pytest.approx(full)
    seen = []

    class Spy(FidelitySchedule):
        def notify(self, algorithm):
            super().notify(algorithm)
            seen.append(algorithm.problem.fidelity)

    result = run_search(problem, make_algorithm("ga", problem, 4), ("n_gen", 4), SearchRun(seed=0),
                        callback=Spy(low=0.5, until_generation=2))
    assert seen == [0.5, 1.0, 1.0, 1.0]
    F = reevaluate_at_full_fidelity(problem, result)
    assert problem.fidelity == 1.0
    assert F[0, 0] == pytest.approx(problem.evaluate(np.atleast_2d(result.X), return_values_of=["F"])[0, 0])
