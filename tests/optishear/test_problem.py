import numpy as np
import pytest
import torch
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.optimize import minimize
from pymoo.util.ref_dirs import get_reference_directions

from optishear_moo import OptiShearProblem, PruningPlan
from optishear_moo.activations import collect_input_statistics
from optishear_moo.models import get_adapter
from optishear_moo.optishear import MetaMetric
from optishear_moo.pruning import build_mask, ria_score, sparsity_report, wanda_score
from tests.conftest import assert_same_weights, make_tiny_model


@pytest.fixture
def problem(tiny_llama, calibration):
    return OptiShearProblem(tiny_llama, calibration, target_sparsity=0.5, batch_size=3,
                            reconstruction_tokens=64)


def _weights(model):
    return [layer.weight.clone() for layer in get_adapter(model).prunable_layers(model)]


def test_encode_decode_round_trip(problem):
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.uniform(problem.xl, problem.xu)
        metric, sparsity, target = problem.space.decode(x)
        again = problem.space.decode(problem.space.encode(metric, sparsity, target))
        assert again[0] == metric
        np.testing.assert_allclose(again[1], sparsity, atol=1e-9)


@pytest.mark.parametrize("layerwise", ["continuous", "discrete"])
def test_average_sparsity_equals_the_target(layerwise, tiny_llama, calibration):
    problem = OptiShearProblem(tiny_llama, calibration, 0.6, objectives=("kl",), layerwise=layerwise,
                               max_deviation=0.3, sparsity_bounds=(0.3, 0.8))
    X = np.random.default_rng(1).uniform(problem.xl, problem.xu, size=(30, problem.n_var))
    X = problem.repair._do(problem, X)
    sizes = np.array(problem.space.block_sizes)
    for x in X:
        _, sparsity, _ = problem.space.decode(x)
        assert np.average(sparsity, weights=sizes) == pytest.approx(0.6, abs=1e-9)
        assert sparsity.min() >= 0.3 - 1e-12 and sparsity.max() <= 0.8 + 1e-12
    plan = problem.decode(X[0])
    plan.apply(tiny_llama)
    assert sparsity_report(tiny_llama).total == pytest.approx(0.6, abs=0.01)


def test_discrete_discrepancy_is_a_constraint_without_repair(tiny_llama, calibration):
    problem = OptiShearProblem(tiny_llama, calibration, 0.5, objectives=("kl",), layerwise="discrete")
    x = problem.encode(MetaMetric.wanda(), [0.55, 0.55, 0.55])
    out = problem.evaluate(np.array([x]), return_as_dictionary=True)
    assert out["G"][0, 0] == pytest.approx(0.05 - 1e-3)
    repaired = problem.repair._do(problem, np.array([x]))[0]
    assert problem.evaluate(np.array([repaired]), return_as_dictionary=True)["G"][0, 0] < 0


@pytest.mark.parametrize("metric, reference", [
    (MetaMetric.magnitude(), lambda w, s: w.abs()),
    (MetaMetric.wanda(), wanda_score),
    (MetaMetric.ria(), ria_score),
])
def test_baseline_metrics_are_points_of_the_space(metric, reference, problem, tiny_llama, calibration):
    plan = problem.decode(problem.encode(metric))
    assert plan.metric == metric and plan.block_sparsity == pytest.approx([0.5] * 3)
    statistics = collect_input_statistics(tiny_llama, calibration)
    masks = plan.masks(tiny_llama)
    for layer in get_adapter(tiny_llama).prunable_layers(tiny_llama):
        expected = build_mask(reference(layer.weight, statistics[layer.name]), 0.5)
        assert torch.equal(masks[layer.name], expected), layer.name


def test_objectives_are_zero_for_the_dense_plan_and_positive_otherwise(tiny_llama, calibration):
    problem = OptiShearProblem(tiny_llama, calibration, (0.0, 0.6),
                               objectives=("kl", "output_error", "reconstruction", "density"),
                               layerwise="uniform", reconstruction_tokens=64)
    dense = problem.encode(MetaMetric.wanda(), target=0.0)
    pruned = problem.encode(MetaMetric.wanda(), target=0.5)
    F = problem.evaluate(np.array([dense, pruned]), return_values_of=["F"])
    np.testing.assert_allclose(F[0], [0, 0, 0, 1], atol=1e-6)
    assert (F[1, :3] > 1e-4).all() and F[1, 3] == pytest.approx(0.5, abs=0.01)


def test_nsga2_and_nsga3_run_and_leave_the_model_dense(problem, tiny_llama):
    dense = _weights(tiny_llama)
    res = minimize(problem, NSGA2(pop_size=6), ("n_gen", 3), seed=1)
    assert res.F.shape[1] == 2 and np.isfinite(res.F).all()
    ref_dirs = get_reference_directions("das-dennis", 2, n_partitions=5)
    res3 = minimize(problem, NSGA3(ref_dirs=ref_dirs, pop_size=6), ("n_gen", 3), seed=1)
    assert len(res3.F) >= 1 and res3.G.size == 0  # continuous layerwise: no constraint to report
    assert all(torch.equal(a, b) for a, b in zip(dense, _weights(tiny_llama)))
    plan = problem.decode(res.X[0])
    assert isinstance(plan, PruningPlan) and "|W|" in plan.describe()


def test_single_objective_ga_and_history_without_the_model(tiny_llama, calibration):
    problem = OptiShearProblem(tiny_llama, calibration, 0.5, objectives=("kl",))
    res = minimize(problem, GA(pop_size=5), ("n_gen", 2), seed=3, save_history=True)
    assert np.asarray(res.F).size == 1 and np.isfinite(res.F).all()
    assert len(res.history) == 2
    copied = res.history[-1].problem
    assert copied is not problem and problem.model is tiny_llama
    # the history's copies hold neither the model nor its caches (never copied)
    assert copied.model is None and copied.evaluator is None
    state = problem.__getstate__()
    assert state["model"] is None and state["reference"] is None and state["evaluator"] is None


def test_same_seed_gives_the_same_front(problem):
    first = minimize(problem, NSGA2(pop_size=6), ("n_gen", 2), seed=7)
    second = minimize(problem, NSGA2(pop_size=6), ("n_gen", 2), seed=7)
    np.testing.assert_array_equal(first.X, second.X)
    np.testing.assert_array_equal(first.F, second.F)


def test_searched_wanda_beats_magnitude_on_kl(problem):
    magnitude, wanda = problem.encode(MetaMetric.magnitude()), problem.encode(MetaMetric.wanda())
    F = problem.evaluate(np.array([magnitude, wanda]), return_values_of=["F"])
    assert F[1, 0] < F[0, 0]


def test_plan_save_load_and_transfer_to_another_model(problem, tiny_llama, calibration, tmp_path):
    plan = problem.decode(problem.encode(MetaMetric.ria(), [0.4, 0.5, 0.6]))
    plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(tmp_path / "plan.json")
    assert loaded.metric == plan.metric and loaded.block_sparsity == plan.block_sparsity
    deeper = make_tiny_model("llama", seed=5)
    deeper_config = deeper.config
    deeper_config.num_hidden_layers = 5
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    deeper = AutoModelForCausalLM.from_config(deeper_config).eval().requires_grad_(False)
    with pytest.raises(ValueError, match="pass calibration"):
        loaded.apply(deeper)
    loaded.apply(deeper, calibration)
    report = sparsity_report(deeper)
    assert report.total == pytest.approx(0.5, abs=0.01)
    assert report.per_block[0] < report.per_block[-1]  # the increasing profile is kept
    plan.apply(tiny_llama)  # the search's own model needs no calibration
    assert sparsity_report(tiny_llama).total == pytest.approx(0.5, abs=0.01)


def test_problem_input_errors(tiny_llama, calibration):
    with pytest.raises(ValueError, match="objectives"):
        OptiShearProblem(tiny_llama, calibration, objectives=("accuracy",))
    with pytest.raises(ValueError, match="density objective needs"):
        OptiShearProblem(tiny_llama, calibration, 0.5, objectives=("kl", "density"))
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        OptiShearProblem(tiny_llama, calibration, 1.2)
    with pytest.raises(ValueError, match="layerwise"):
        OptiShearProblem(tiny_llama, calibration, 0.5, layerwise="random")


def test_sequential_apply_of_the_wanda_point_equals_sequential_wanda(problem, calibration):
    from optishear_moo import prune_model

    reference = make_tiny_model("llama")
    expected = prune_model(reference, calibration, method="wanda", sparsity=0.5, progress=False)
    plan = problem.decode(problem.encode(MetaMetric.wanda()))
    model = problem.model
    plan.apply(model)  # sequential with the search's calibration
    for layer in get_adapter(model).prunable_layers(model):
        assert torch.equal(layer.weight != 0, expected.masks[layer.name]), layer.name


def test_joint_space_searches_the_weight_update_and_plans_keep_it(tiny_llama, calibration, tmp_path):
    problem = OptiShearProblem(tiny_llama, calibration, 0.6, objectives=("kl",), search_update=True,
                               batch_size=3)
    assert "update" in problem.vars and problem.n_var == 5 + 1 + 3
    dense = [layer.weight.clone() for layer in problem.layers]
    kl = {update: problem.evaluate(problem.encode(MetaMetric.wanda(), update=update)[None],
                                   return_values_of=["F"])[0, 0] for update in ("none", "obs", "lstsq")}
    assert kl["obs"] < 0.9 * kl["none"] and kl["lstsq"] < 0.9 * kl["none"], kl
    assert all(torch.equal(a, layer.weight) for a, layer in zip(dense, problem.layers))  # restored
    seeds = problem.initial_population(6)
    assert {problem.space.decode_update(x) for x in seeds} >= {"none", "obs"}
    plan = problem.decode(problem.encode(MetaMetric.wanda(), update="obs"))
    assert plan.update == "obs" and "obs weight update" in plan.describe()
    plan.save(tmp_path / "plan.json")
    loaded = PruningPlan.load(tmp_path / "plan.json")
    assert loaded.update == "obs"
    # applying it reconstructs the kept weights: block 0 gets the same mask with other values
    masked, updated = make_tiny_model("llama"), make_tiny_model("llama")
    PruningPlan(plan.metric, plan.block_sparsity, 0.6).apply(masked, calibration)
    loaded.apply(updated, calibration)
    pairs = zip(get_adapter(masked).prunable_layers(masked), get_adapter(updated).prunable_layers(updated))
    for a, b in pairs:
        if a.block_index == 0:
            assert torch.equal(a.weight == 0, b.weight == 0) and not torch.equal(a.weight, b.weight)
    assert sparsity_report(updated).total == pytest.approx(sparsity_report(masked).total, abs=1e-6)
    with pytest.raises(ValueError, match="needs calibration tokens"):
        loaded.apply(make_tiny_model("llama"))


@pytest.mark.parametrize("settings", [dict(search_update=True, layerwise="continuous"),
                                      dict(nm="2:4", objectives=("kl", "output_error")),
                                      dict(target_sparsity=(0.3, 0.6), update="obs",
                                           objectives=("kl", "density", "reconstruction"))])
def test_a_population_in_one_block_walk_scores_as_one_model_at_a_time(settings, tiny_llama, calibration):
    settings = {"objectives": ("kl", "output_error", "reconstruction"), "target_sparsity": 0.5, **settings}
    problem = OptiShearProblem(tiny_llama, calibration, batch_size=3, **settings)
    X = np.vstack([problem.initial_population(6, seed=1), problem.initial_population(2, seed=1)[:1]])
    walked = problem.evaluate(X, return_values_of=["F"])
    one_at_a_time = []
    for x in X:  # masks of the whole model, applied in place, one full forward per candidate
        metric, sparsity, _ = problem.space.decode(x)
        masks = problem.mask_builder.masks(metric, sparsity)
        values = problem.evaluator.evaluate(masks, 1.0, problem.space.decode_update(x))
        one_at_a_time.append([values[name] for name in problem.objectives])
    np.testing.assert_allclose(walked, one_at_a_time, rtol=1e-4, atol=1e-7)
    assert len({tuple(f) for f in walked}) >= 4  # different candidates, different scores
    dense = make_tiny_model("llama")
    assert_same_weights(tiny_llama, dense)
