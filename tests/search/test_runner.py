"""What a running search shows: a progress bar, and the front written after every generation."""

import json

import numpy as np
import pytest
from pymoo.algorithms.moo.nsga2 import NSGA2

from optishear_moo import OptiShearConfig, OptiShearProblem, search_optishear
from optishear_moo.search import SearchRun, run_search
from tests.conftest import InterruptAt


def test_progress_bar_counts_generations_and_candidates(problem, capsys):
    run_search(problem, NSGA2(pop_size=4), ("n_gen", 3), SearchRun(seed=0, progress=True))
    shown = capsys.readouterr().err
    assert "generations" in shown and "3/3" in shown
    assert "scored this generation" in shown and "evaluations" in shown and "best kl" in shown
    assert "block 3/3" in shown  # each population's walk over the tiny model's blocks
    run_search(problem, NSGA2(pop_size=4), ("n_gen", 2), SearchRun(seed=0))
    assert capsys.readouterr().err == ""  # quiet by default
    assert problem.on_candidate is None


def test_the_front_is_written_after_every_generation(problem, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_search(problem, NSGA2(pop_size=4), ("n_gen", 4), SearchRun(tmp_path, seed=0),
                   callback=InterruptAt(3))
    front = json.loads((tmp_path / "front.json").read_text())  # as the last whole generation left it
    assert front and {point["generation"] for point in front} == {2}
    assert all(set(point["objectives"]) == set(problem.objectives) and "plan" in point for point in front)
    plans = [json.dumps(point["plan"], sort_keys=True) for point in front]
    assert len(plans) == len(set(plans))  # one point per distinct plan
    if len(front) > 1:
        assert (tmp_path / "pareto.png").is_file()


def test_a_size_range_starts_from_and_is_drawn_against_baselines_across_it(tiny_llama, calibration):
    problem = OptiShearProblem(tiny_llama, calibration, (0.3, 0.7), objectives=("kl", "density"),
                               batch_size=3)
    targets = problem.baseline_targets(4)
    assert targets == pytest.approx([0.3, 0.4333333, 0.5666667, 0.7])
    seeds = problem.initial_population(12)
    densities = sorted({round(problem.decode(x).target_sparsity, 6) for x in seeds[:4]})
    assert densities == pytest.approx(targets)  # uniform Wanda at every target first
    config = OptiShearConfig((0.3, 0.7), objectives=("kl", "density"), pop_size=6, n_gen=2, batch_size=3)
    result = search_optishear(tiny_llama, calibration, config)
    curves = result.baseline_curves()
    assert len(curves["uniform Wanda"]) == 3 and np.ptp([point[1] for point in curves["uniform Wanda"]]) > 0.3
    assert result.chosen.target_sparsity == max(point["plan"]["target_sparsity"] for point in result.front)
    assert result.chosen_by == "the smallest model of the front"
    assert len(result.baseline_points()) == 3 * 3  # three baselines at three sparsities


def test_front_arrays_keeps_feasible_rows_only():
    from pymoo.core.result import Result

    from optishear_moo.search import front_arrays

    result = Result()
    result.X, result.F = np.array([[0, 1], [1, 0], [1, 1]]), np.array([[0.5, 0.4], [1e10, 1e10], [0.3, 0.6]])
    result.CV = np.array([[0.0], [2.0], [0.0]])
    X, F = front_arrays(result)
    np.testing.assert_array_equal(X, [[0, 1], [1, 1]])
    assert F.max() < 1
    result.CV = np.array([[1.0], [2.0], [3.0]])
    with pytest.raises(ValueError, match="no feasible candidate"):
        front_arrays(result)
