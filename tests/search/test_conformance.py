"""pymoo conformance: every pymoo algorithm that fits a problem runs on each of the four problems,
and so do pymoo's history, callbacks, terminations, ask-and-tell and its dill checkpoint pattern.

Algorithms that cannot work with a problem are in README "pymoo conformance", with the reason."""

import dill
import numpy as np
import pytest
import torch
from pymoo.algorithms.moo.age import AGEMOEA
from pymoo.algorithms.moo.age2 import AGEMOEA2
from pymoo.algorithms.moo.ctaea import CTAEA
from pymoo.algorithms.moo.moead import MOEAD
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.algorithms.moo.rnsga2 import RNSGA2
from pymoo.algorithms.moo.rvea import RVEA
from pymoo.algorithms.moo.sms import SMSEMOA
from pymoo.algorithms.moo.spea2 import SPEA2
from pymoo.algorithms.moo.unsga3 import UNSGA3
from pymoo.algorithms.soo.nonconvex.brkga import BRKGA
from pymoo.algorithms.soo.nonconvex.cmaes import CMAES
from pymoo.algorithms.soo.nonconvex.de import DE
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.algorithms.soo.nonconvex.nelder import NelderMead
from pymoo.algorithms.soo.nonconvex.pattern import PatternSearch
from pymoo.algorithms.soo.nonconvex.pso import PSO
from pymoo.core.callback import Callback
from pymoo.core.mixed import (
    MixedVariableDuplicateElimination,
    MixedVariableGA,
    MixedVariableMating,
    MixedVariableSampling,
)
from pymoo.optimize import minimize
from pymoo.termination.max_eval import MaximumFunctionCallTermination
from pymoo.util.ref_dirs import get_reference_directions

from optishear_moo import (
    BlockRemovalProblem,
    LevelSearchProblem,
    OptiShearProblem,
    PruningPlan,
    StructuredPruningProblem,
)
from optishear_moo.darwinlm import StructuredLevelDatabase
from optishear_moo.evopress import SparsityLevelDatabase
from tests.conftest import make_tiny_model
from tests.evop.helpers import deep_model

REF_DIRS = get_reference_directions("das-dennis", 2, n_partitions=3)  # 4 directions

MULTI = {
    "NSGA2": lambda: NSGA2(pop_size=4), "NSGA3": lambda: NSGA3(ref_dirs=REF_DIRS, pop_size=4),
    "UNSGA3": lambda: UNSGA3(ref_dirs=REF_DIRS, pop_size=4),
    "RNSGA2": lambda: RNSGA2(ref_points=np.array([[0.1, 0.5]]), pop_size=4),
    "AGEMOEA": lambda: AGEMOEA(pop_size=4), "AGEMOEA2": lambda: AGEMOEA2(pop_size=4),
    "SMSEMOA": lambda: SMSEMOA(pop_size=4), "RVEA": lambda: RVEA(ref_dirs=REF_DIRS, pop_size=4),
    "CTAEA": lambda: CTAEA(ref_dirs=REF_DIRS), "SPEA2": lambda: SPEA2(pop_size=4),
    "MOEAD": lambda: MOEAD(ref_dirs=REF_DIRS, n_neighbors=2),
}
SINGLE = {
    "GA": lambda: GA(pop_size=4), "DE": lambda: DE(pop_size=4),
    "BRKGA": lambda: BRKGA(n_elites=2, n_offsprings=2, n_mutants=1), "CMAES": lambda: CMAES(popsize=4),
    "PSO": lambda: PSO(pop_size=4), "NelderMead": lambda: NelderMead(),
    "PatternSearch": lambda: PatternSearch(),
}
MIXED = {
    "MixedVariableGA": lambda: MixedVariableGA(pop_size=4),
    "NSGA2-mixed": lambda: NSGA2(pop_size=4, sampling=MixedVariableSampling(),
                                 mating=MixedVariableMating(eliminate_duplicates=MixedVariableDuplicateElimination()),
                                 eliminate_duplicates=MixedVariableDuplicateElimination()),
}


@pytest.fixture(scope="module")
def calibration_ids():
    return torch.randint(0, 384, (4, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def problems(calibration_ids):
    """(single-objective, multi-objective) problems of each method on tiny models."""
    model = make_tiny_model("llama")
    database = StructuredLevelDatabase.build(make_tiny_model("llama"), calibration_ids, mlp_levels=4)
    levels = SparsityLevelDatabase.build(make_tiny_model("llama"), calibration_ids, [0.3, 0.4, 0.5, 0.6, 0.7])
    return {
        "optishear": (OptiShearProblem(model, calibration_ids, 0.5, objectives=("kl",), batch_size=2),
                      OptiShearProblem(model, calibration_ids, 0.5, batch_size=2, reconstruction_tokens=16)),
        "evop": (BlockRemovalProblem(deep_model(n_layers=5), calibration_ids, 2),
                 BlockRemovalProblem(deep_model(n_layers=5), calibration_ids, (1, 3))),
        "darwinlm": (StructuredPruningProblem(make_tiny_model("llama"), calibration_ids, 1.5,
                                              database=database),
                     StructuredPruningProblem(make_tiny_model("llama"), calibration_ids, (1.2, 2.0),
                                              database=database)),
        "evopress": (LevelSearchProblem(make_tiny_model("llama"), calibration_ids, 0.5, levels),
                     LevelSearchProblem(make_tiny_model("llama"), calibration_ids, (0.4, 0.6), levels)),
    }


def _check(result, problem):
    F = np.atleast_2d(result.F) if result.F is not None else None
    assert F is not None and F.shape[1] == problem.n_obj and np.isfinite(F).all()
    x = result.X if isinstance(result.X, dict) or np.ndim(result.X) == 1 else result.X[0]
    if isinstance(problem, OptiShearProblem):
        assert isinstance(problem.decode(x), PruningPlan)
    elif isinstance(problem, BlockRemovalProblem):
        assert all(0 <= b < problem.n_var for b in problem.decode(x))
    elif isinstance(problem, LevelSearchProblem):
        assert problem.levels(x).shape == (problem.n_var,)
    else:
        assert problem.levels(x).shape == (problem.n_var // 2, 2)


# EvoP, DarwinLM and EvoPress hold the size range as constraints, which pymoo's MOEA/D refuses
# (docs/methods.md)
CANNOT = {("MOEAD", "evop"), ("MOEAD", "darwinlm"), ("MOEAD", "evopress")}
METHODS = ["optishear", "evop", "darwinlm", "evopress"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(MULTI))
def test_multi_objective_algorithms(problems, method, name):
    problem = problems[method][1]
    if (name, method) in CANNOT:
        with pytest.raises(AssertionError, match="does not support any constraints"):
            minimize(problem, MULTI[name](), ("n_gen", 2), seed=1)
        return
    result = minimize(problem, MULTI[name](), ("n_gen", 2), seed=1)
    _check(result, problem)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(SINGLE))
def test_single_objective_algorithms(problems, method, name):
    problem = problems[method][0]
    result = minimize(problem, SINGLE[name](), MaximumFunctionCallTermination(12), seed=1)
    _check(result, problem)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(MIXED))
def test_mixed_variable_algorithms_decode_to_the_same_plans(problems, method, name):
    problem = problems[method][0 if name == "MixedVariableGA" else 1]
    result = minimize(problem, MIXED[name](), ("n_gen", 2), seed=1)
    _check(result, problem)
    X = np.atleast_1d(result.X)
    values = X[0]
    assert isinstance(values, dict) and set(values) == set(problem.vars)
    vector = problem.as_vector(values)
    assert np.all((vector >= problem.xl) & (vector <= problem.xu))
    # the dict and its vector form decode and score alike
    by_dict = problem.evaluate(np.array([values], dtype=object), return_values_of=["F"])
    by_vector = problem.evaluate(vector[None], return_values_of=["F"])
    np.testing.assert_allclose(by_dict, by_vector)
    by_dict, by_vector = problem.decode(values), problem.decode(vector)
    if isinstance(by_dict, PruningPlan):
        assert by_dict.to_dict() == by_vector.to_dict()
    else:
        np.testing.assert_array_equal(by_dict, by_vector)


def test_history_callbacks_terminations_and_ask_and_tell(problems):
    problem = problems["optishear"][1]
    seen = []

    class Spy(Callback):
        def notify(self, algorithm):
            seen.append(algorithm.n_gen)

    result = minimize(problem, NSGA2(pop_size=4), MaximumFunctionCallTermination(10), seed=2, callback=Spy(),
                      save_history=True)
    assert seen and len(result.history) == len(seen) and result.algorithm.evaluator.n_eval >= 10
    assert all(entry.problem.model is None for entry in result.history)  # never copied into the history

    algorithm = NSGA2(pop_size=4)
    algorithm.setup(problem, termination=("n_gen", 2), seed=2)
    while algorithm.has_next():
        population = algorithm.ask()
        algorithm.evaluator.eval(problem, population)
        algorithm.tell(infills=population)
    assert algorithm.n_gen - 1 == 2 and np.isfinite(algorithm.result().F).all()


def test_problem_keyword_arguments_pass_through(calibration_ids):
    model = make_tiny_model("llama")
    calls = []
    problem = OptiShearProblem(model, calibration_ids, 0.5, objectives=("kl",), batch_size=2,
                               callback=lambda X, out: calls.append(len(X)), strict=False)
    problem.evaluate(np.atleast_2d(problem.encode()))
    assert calls == [1] and problem.strict is False
    with pytest.raises(ValueError, match="elementwise=True is not supported"):
        OptiShearProblem(model, calibration_ids, 0.5, objectives=("kl",), elementwise=True)


def test_pymoo_dill_checkpoint_pattern(tmp_path, calibration_ids):
    model = make_tiny_model("llama")
    problem = OptiShearProblem(model, calibration_ids, 0.5, batch_size=2, reconstruction_tokens=16)
    straight = minimize(problem, NSGA2(pop_size=4), ("n_gen", 3), seed=5)

    algorithm = NSGA2(pop_size=4)
    algorithm.setup(problem, seed=5, termination=("n_gen", 3))
    algorithm.next()
    path = tmp_path / "checkpoint.dill"
    path.write_bytes(dill.dumps(algorithm))
    assert path.stat().st_size < 200_000  # the model is never in it

    checkpoint = dill.loads(path.read_bytes())  # comes back without the model: evaluating says what to do
    with pytest.raises(ValueError, match="set algorithm.problem to the problem you built"):
        checkpoint.problem.evaluate(np.atleast_2d(problem.encode()))
    checkpoint.problem = problem
    resumed = minimize(problem, checkpoint, ("n_gen", 3), copy_algorithm=False, seed=5)
    np.testing.assert_allclose(resumed.F, straight.F)
