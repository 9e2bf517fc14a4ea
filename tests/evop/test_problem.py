import itertools

import numpy as np
import pytest
import torch
from pymoo.core.problem import Problem
from pymoo.operators.mutation.bitflip import BitflipMutation
from pymoo.optimize import minimize

from optishear_moo.evop.blocks import remove_blocks_
from optishear_moo.evop.fitness import BlockRemovalEvaluator
from optishear_moo.evop.problem import (
    BlockCountRepair,
    BlockRemovalProblem,
    BlockRemovalSampling,
    BlockSwapMutation,
    CountPreservingCrossover,
    block_removal_algorithm,
)
from optishear_moo.search import SearchRun, run_search
from tests.evop.helpers import deep_model


class CountOnly(Problem):
    def __init__(self, n_var, n_remove_range):
        self.n_remove_range = n_remove_range
        super().__init__(n_var=n_var, n_obj=1, xl=0, xu=1, vtype=bool)


@pytest.mark.parametrize("count_range", [(3, 3), (2, 5)])
def test_every_operator_keeps_the_count_in_range(count_range):
    problem, rng = CountOnly(12, count_range), np.random.default_rng(0)
    low, high = count_range
    X = BlockRemovalSampling()._do(problem, 40, random_state=rng)
    assert ((X.sum(1) >= low) & (X.sum(1) <= high)).all() and len({tuple(r) for r in X}) > 10
    children = CountPreservingCrossover()._do(problem, np.stack([X[:20], X[20:]]), random_state=rng)
    assert (children[0].sum(1) == X[:20].sum(1)).all() and (children[1].sum(1) == X[20:].sum(1)).all()
    mutated = BlockSwapMutation(n_swaps=2)._do(problem, X, random_state=rng)
    assert ((mutated.sum(1) >= low) & (mutated.sum(1) <= high)).all() and (mutated != X).any()
    if low == high:
        assert (mutated.sum(1) == low).all()
    flipped = BitflipMutation(prob_var=0.5)._do(problem, X, random_state=rng)
    repaired = BlockCountRepair()._do(problem, flipped, random_state=rng)
    assert ((repaired.sum(1) >= low) & (repaired.sum(1) <= high)).all()


def test_search_finds_the_exhaustive_optimum_and_a_size_front(calibration):
    model = deep_model()
    evaluator = BlockRemovalEvaluator(model, calibration)
    problem = BlockRemovalProblem(model, calibration, 2, evaluator=evaluator)
    result = minimize(problem, block_removal_algorithm(problem, pop_size=8), ("n_gen", 6), seed=0)
    best = min((evaluator.evaluate([i, j])["kl"], [i, j]) for i in range(6) for j in range(i + 1, 6))
    assert problem.decode(result.X) == best[1] and result.F[0] == pytest.approx(best[0])
    again = minimize(problem, block_removal_algorithm(problem, pop_size=8), ("n_gen", 6), seed=0)
    assert np.array_equal(again.X, result.X)

    multi = BlockRemovalProblem(model, calibration, (1, 3), evaluator=evaluator)
    front = minimize(multi, block_removal_algorithm(multi, pop_size=10), ("n_gen", 5), seed=0)
    kept = sorted(front.F[:, 1].tolist())
    assert multi.n_obj == 2 and set(kept) <= {3, 4, 5} and len(set(kept)) >= 2
    assert all(multi.n_var - len(multi.decode(x)) == f for x, f in zip(front.X, front.F[:, 1]))


def test_block_search_checkpoints_and_resumes_like_an_uninterrupted_run(calibration, tmp_path):
    model = deep_model()
    evaluator = BlockRemovalEvaluator(model, calibration)
    problem = BlockRemovalProblem(model, calibration, 2, evaluator=evaluator)
    full = run_search(problem, block_removal_algorithm(problem, pop_size=4), ("n_gen", 4),
                      SearchRun(tmp_path / "a", seed=1))
    run_search(problem, block_removal_algorithm(problem, pop_size=4), ("n_gen", 2),
               SearchRun(tmp_path / "b", seed=1))
    # two more generations: the first two are replayed from the log, the next ones run
    resumed = run_search(problem, block_removal_algorithm(problem, pop_size=4), ("n_gen", 4),
                         SearchRun(tmp_path / "b", resume=True, seed=1))
    assert np.array_equal(resumed.X, full.X) and resumed.F[0] == full.F[0]


def test_bad_input_names_the_fix(calibration):
    model = deep_model()
    with pytest.raises(ValueError, match="keep at least one"):
        remove_blocks_(model, range(6))
    with pytest.raises(ValueError, match="outside 0..5"):
        remove_blocks_(model, [7])
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        BlockRemovalProblem(model, calibration, 6)
    with pytest.raises(ValueError, match="low < high"):
        BlockRemovalProblem(model, calibration, (3, 1))
    with pytest.raises(ValueError, match="kl or ppl"):
        BlockRemovalProblem(model, calibration, 1, objective="loss")
    with pytest.raises(ValueError, match="unsupported architecture"):
        remove_blocks_(torch.nn.Linear(2, 2), [0])


def test_one_plus_lambda_search_finds_the_exhaustive_optimum_from_a_warm_start(calibration):
    model = deep_model(n_layers=8, seed=3)
    evaluator = BlockRemovalEvaluator(model, calibration)
    problem = BlockRemovalProblem(model, calibration, 3, evaluator=evaluator)
    start = [5, 6, 7]
    algorithm = block_removal_algorithm(problem, pop_size=6, initial=[start], kind="1+lambda")
    result = minimize(problem, algorithm, ("n_gen", 8), seed=0)
    scores = {tuple(c): evaluator.evaluate(list(c))["kl"] for c in itertools.combinations(range(8), 3)}
    assert problem.decode(result.X) == list(min(scores, key=scores.get))
    assert result.algorithm.evaluator.n_eval <= 1 + 6 * 7 < len(scores)  # fewer than all 56
    run = np.array([[0, 0, 1, 1, 1, 0, 0, 0]] * 20, dtype=bool)
    moved = BlockSwapMutation(shift_prob=1.0)._do(CountOnly(8, (3, 3)), run,
                                                  random_state=np.random.default_rng(0))
    for row in moved:  # one shift: a removed block gives its place to a kept neighbour
        (left,), (joined,) = np.flatnonzero(run[0] & ~row), np.flatnonzero(row & ~run[0])
        assert abs(left - joined) == 1 and joined in (1, 5)
    with pytest.raises(ValueError, match="1\\+lambda.*not a block-removal search|choose ga or 1\\+lambda"):
        block_removal_algorithm(problem, kind="cmaes")


def test_a_staged_one_plus_lambda_search_counts_what_it_computes_and_keeps_its_best(calibration):
    """Offspring scored on half the windows, the best two and the parent on all: the passes the
    problem counts are exactly those the evaluator computed (re-scoring is cached), and the
    parent's KL on all windows never rises from one generation to the next."""
    from pymoo.core.callback import Callback

    from optishear_moo.search.levels import halving_stages

    model = deep_model(n_layers=8, seed=4)  # where the parent, not elitist, would fall in generation 3
    evaluator = BlockRemovalEvaluator(model, calibration)
    problem = BlockRemovalProblem(model, calibration, 3, evaluator=evaluator, fidelity=0.5)
    stages = halving_stages(1, 2, n_samples=len(calibration))
    assert [(s.survivors, s.eval_samples) for s in stages] == [(2, 3), (1, None)]

    class Best(Callback):
        def __init__(self):
            super().__init__()
            self.kl = []

        def notify(self, algorithm):
            self.kl.append(evaluator.evaluate(problem.decode(algorithm.pop[0].X))["kl"])

    best = Best()
    algorithm = block_removal_algorithm(problem, pop_size=8, initial=[[5, 6, 7]], kind="1+lambda",
                                        stages=stages)
    result = minimize(problem, algorithm, ("n_gen", 8), seed=3, callback=best)
    counted = problem.n_passes
    assert counted == pytest.approx(evaluator.n_evaluations - len(best.kl))  # the callback's are full passes
    assert counted <= 1.5 + 7 * (4 + 2) < 1 + 7 * 8  # fewer than one pass per offspring
    assert best.kl == sorted(best.kl, reverse=True) and best.kl[-1] < best.kl[0]
    assert result.algorithm.pop[0].data["kl"] == pytest.approx(best.kl[-1])
    with pytest.raises(ValueError, match="fidelity is a share of the calibration windows in \\(0, 1\\]"):
        BlockRemovalProblem(model, calibration, 3, evaluator=evaluator, fidelity=0)
    with pytest.raises(ValueError, match="staged selection needs algorithm 1\\+lambda"):
        block_removal_algorithm(problem, kind="ga", stages=stages)


def test_a_resumed_staged_search_counts_the_passes_of_the_generations_it_replays(calibration, tmp_path):
    from optishear_moo.evop.problem import PassBudget
    from optishear_moo.search.levels import halving_stages
    from tests.conftest import InterruptAt

    model = deep_model(n_layers=8, seed=4)
    evaluator = BlockRemovalEvaluator(model, calibration)

    def run(directory, resume=False, **kwargs):
        problem = BlockRemovalProblem(model, calibration, 3, evaluator=evaluator, fidelity=0.5)
        algorithm = block_removal_algorithm(problem, pop_size=8, initial=[[5, 6, 7]], kind="1+lambda",
                                            stages=halving_stages(1, 2, n_samples=len(calibration)))
        result = run_search(problem, algorithm, PassBudget(20), SearchRun(directory, resume, seed=3),
                            **kwargs)
        return problem, result

    straight, result = run(tmp_path / "a")
    assert 20 <= straight.n_passes < 20 + 4 + 2
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", callback=InterruptAt(3))
    resumed, again = run(tmp_path / "b", resume=True)
    assert resumed.n_passes == straight.n_passes  # the first population's F (on half the windows) too
    assert straight.decode(again.algorithm.pop[0].X) == straight.decode(result.algorithm.pop[0].X)


def test_a_full_score_cache_is_emptied_without_losing_the_scores_asked_for(calibration):
    model = deep_model(n_layers=8, seed=3)
    problem = BlockRemovalProblem(model, calibration, 3)
    problem.score_cache_size = 1
    X = [problem.encode(removed) for removed in ([0, 1, 2], [5, 6, 7], [1, 3, 5])]
    first = problem.scores(X[:2])
    again = problem.scores([X[0], X[2]])  # one held, one new: the full cache is emptied first
    assert again[0] == first[0] and problem.scores([X[2]]) == again[1:]
