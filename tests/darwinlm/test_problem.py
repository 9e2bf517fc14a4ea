import numpy as np
import pytest
import torch
from pymoo.optimize import minimize

from optishear_moo.darwinlm import StructuredLevelDatabase, kept_parameters
from optishear_moo.darwinlm.problem import StructuredPruningProblem, darwinlm_algorithm
from optishear_moo.search import SearchRun, SelectionStage, halving_stages, run_search
from optishear_moo.search.levels import BudgetSampling, LevelSwitchMutation
from tests.conftest import make_tiny_model


@pytest.fixture
def problem(calibration):
    model = make_tiny_model("llama")
    return StructuredPruningProblem(model, calibration, 2.0, mlp_levels=8)


def test_uniform_allocation_meets_the_target_and_operators_keep_the_budget(problem):
    x = problem.uniform_levels(2.0)
    assert 0.45 <= problem.kept_share(x) <= 0.5
    rng = np.random.default_rng(0)
    X = BudgetSampling()._do(problem, 12, random_state=rng)
    budgets = {kept_parameters(problem.database, problem.levels(x)) for x in X}
    assert len(budgets) == 1 and len({tuple(x) for x in X}) > 6
    assert ((X >= problem.xl) & (X <= problem.xu)).all()
    mutated = LevelSwitchMutation()._do(problem, X, random_state=rng)
    assert {kept_parameters(problem.database, problem.levels(x)) for x in mutated} == budgets
    assert (mutated != X).any(axis=1).mean() > 0.8 and ((mutated >= 0) & (mutated <= problem.xu)).all()


def test_one_shot_search_improves_on_uniform_and_keeps_the_budget(calibration):
    model = make_tiny_model("llama")
    with torch.no_grad():  # block 0's MLP barely matters: the best allocation prunes it more
        model.model.layers[0].mlp.down_proj.weight.mul_(0.01)
    problem = StructuredPruningProblem(model, calibration, 2.0, mlp_levels=8)
    uniform = problem.evaluate(problem.uniform_levels(2.0)[None], return_values_of=["F"])[0, 0]
    result = minimize(problem, darwinlm_algorithm(problem, pop_size=2, n_offsprings=8), ("n_gen", 10), seed=0)
    # uniform is the first sampled candidate and the GA is elitist: the search must find better
    assert result.F[0] < uniform * 0.99
    assert problem.levels(result.X)[0, 1] > problem.levels(problem.uniform_levels(2.0))[0, 1]
    assert problem.kept_share(result.X) == pytest.approx(problem.kept_share(problem.uniform_levels(2.0)))


class CountingProblem(StructuredPruningProblem):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage_calls = []

    def finetuned_kl(self, x, finetune_tokens, eval_samples=None):
        self.stage_calls.append(finetune_tokens)
        return super().finetuned_kl(x, finetune_tokens, eval_samples)


def test_training_aware_selection_keeps_the_scheduled_survivors(calibration, tmp_path):
    model = make_tiny_model("llama")
    problem = CountingProblem(model, calibration, 2.0, mlp_levels=8)
    stages = [SelectionStage(4, finetune_tokens=32), SelectionStage(2, finetune_tokens=64),
              SelectionStage(1, finetune_tokens=96)]
    assert halving_stages(1, finetune_tokens=[32, 64, 96]) == stages
    algorithm = darwinlm_algorithm(problem, pop_size=1, n_offsprings=6, stages=stages)
    dense_before = {n: p.clone() for n, p in problem.evaluator.originals[0][1].named_parameters()}
    result = run_search(problem, algorithm, ("n_gen", 2), SearchRun(tmp_path, seed=0))
    # generation 2: 1 parent + 6 offspring enter; 7 are fine-tuned on 32, 4 on 64, 2 on 96 tokens
    assert problem.stage_calls[-13:] == [32] * 7 + [64] * 4 + [96] * 2
    assert "finetuned_kl" in result.pop[0].data and len(result.pop) == 1
    # what the search spent: every one-shot score and every stage score over all the windows, and
    # each stage's fine-tune on its tokens in whole training windows
    seq_len = calibration.shape[1]
    assert problem.evaluator.finetune_tokens == sum(max(1, round(t / seq_len)) * seq_len
                                                    for t in problem.stage_calls)
    assert problem.evaluator.scored_tokens == calibration.numel() * (
        result.algorithm.evaluator.n_eval + len(problem.stage_calls))
    # a fine-tune only judges: the database still rebuilds the untrained candidate
    assert problem.evaluator.evaluate(problem.levels(result.X)) == pytest.approx(float(result.F[0]), rel=1e-5)
    assert all(torch.equal(p, problem.database.dense[0][n.split("_")[0]])
               for n, p in dense_before.items() if n.endswith("weight") and n.split("_")[0] in ("gate", "up"))
    with pytest.raises(ValueError, match="ending at the population size pop_size=2"):
        darwinlm_algorithm(problem, pop_size=2, stages=stages)
    with pytest.raises(ValueError, match="training set"):
        problem.finetuned_kl(problem.uniform_levels(2.0), 10**6)


def test_multi_objective_front_spans_compressions(calibration):
    model = make_tiny_model("llama")
    database = StructuredLevelDatabase.build(model, calibration, mlp_levels=8)
    problem = StructuredPruningProblem(model, calibration, (1.3, 2.5), database=database)
    result = minimize(problem, darwinlm_algorithm(problem, pop_size=8, n_offsprings=8), ("n_gen", 4), seed=0)
    shares = result.F[:, 1]
    assert problem.n_obj == 2 and len(result.F) >= 2
    assert shares.min() >= 1 / 2.5 - 1e-9 and shares.max() <= 1 / 1.3 + 1e-9 and np.ptp(shares) > 0.05
    dense = problem.restore_dense()
    assert not hasattr(dense.config, "structured_layers")
    assert dense.model.layers[0].mlp.down_proj.weight.shape == (64, 128)


def test_bad_targets(calibration):
    model = make_tiny_model("llama")
    with pytest.raises(ValueError, match="above 1"):
        StructuredPruningProblem(model, calibration, 0.8)
