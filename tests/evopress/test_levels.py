"""EvoPress's sparsity-level database and search on a tiny Llama."""

import copy
import json

import numpy as np
import pytest
import torch

from optishear_moo.activations import collect_input_statistics
from optishear_moo.evaluation import kl_to_dense
from optishear_moo.evopress import (
    EvoPressConfig,
    LevelSearchProblem,
    SparsityLevelDatabase,
    search_evopress,
    sparsity_ladder,
)
from optishear_moo.models import get_adapter
from optishear_moo.pruning import prune_model, sparsegpt_prune_
from optishear_moo.search import SearchRun, halving_stages, run_search
from optishear_moo.search.levels import (
    BudgetSampling,
    LevelSwitchMutation,
    StagedSurvival,
    level_algorithm,
)
from tests.conftest import InterruptAt, assert_same_weights, make_tiny_model

LADDER = [0.4, 0.5, 0.6]


@pytest.fixture(scope="module")
def calibration_ids():
    return torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def database(calibration_ids):
    return SparsityLevelDatabase.build(make_tiny_model("llama"), calibration_ids, LADDER)


def test_ladder():
    assert sparsity_ladder(0.5) == [0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65]
    assert sparsity_ladder((0.3, 0.4), step=0.1, levels_each_side=1) == [0.2, 0.3, 0.4, 0.5]
    assert sparsity_ladder(0.1, levels_each_side=3)[0] == 0.0
    assert 0.52 in sparsity_ladder(0.52)


def test_database_holds_sparsegpt_from_dense_inputs_at_every_level(database, calibration_ids, tmp_path):
    model = make_tiny_model("llama")
    layers = get_adapter(model).prunable_layers(model)
    name = "model.layers.2.mlp.down_proj"  # the last block: dense inputs differ from pruned ones
    statistics = collect_input_statistics(model, calibration_ids, layers=layers, with_gram=True)
    for level, sparsity in enumerate(LADDER):
        weight = database.weight(name, level)
        assert float((weight == 0).float().mean()) == pytest.approx(sparsity, abs=0.01)
        expected = next(layer.weight for layer in layers if layer.name == name).clone()
        sparsegpt_prune_(expected, statistics[name].gram, statistics[name].count, sparsity)
        torch.testing.assert_close(weight, expected, rtol=1e-4, atol=1e-5)
    on_disk = SparsityLevelDatabase.build(model, calibration_ids, LADDER, method="wanda", update="obs",
                                          directory=tmp_path / "db")
    assert len(list((tmp_path / "db").glob("*.safetensors"))) == len(layers)
    in_memory = SparsityLevelDatabase.build(model, calibration_ids, LADDER, method="wanda", update="obs")
    torch.testing.assert_close(on_disk.weight(name, 2), in_memory.weight(name, 2))


def test_a_database_directory_that_cannot_hold_it_is_refused_before_the_walk(calibration_ids, tmp_path,
                                                                           monkeypatch):
    import optishear_moo.evopress.database as module
    from optishear_moo.errors import SettingError

    def no_walk(*args, **kwargs):
        raise AssertionError("the walk started before the directory was checked")

    monkeypatch.setattr(module, "sequential_blocks", no_walk)
    model = make_tiny_model("llama")
    (tmp_path / "a file").write_text("")
    (tmp_path / "a link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for name in ("a file", "a link"):
        with pytest.raises(SettingError, match="database_dir .* cannot hold the database"):
            SparsityLevelDatabase.build(model, calibration_ids, LADDER, directory=tmp_path / name)
    assert not (tmp_path / "elsewhere").exists()
    import optishear_moo.evopress.search as search_module

    monkeypatch.setattr(search_module, "_method_choice", no_walk)  # auto compares methods first
    with pytest.raises(SettingError, match="database_dir .* cannot hold the database"):
        search_evopress(model, calibration_ids, EvoPressConfig(target_sparsity=0.5, method="auto",
                                                               database_dir=str(tmp_path / "a file")))


def test_a_database_with_inputs_at_a_level_stitches_uniformly_into_sequential_sparsegpt(calibration_ids):
    model = make_tiny_model("llama")
    dense = {name: p.clone() for name, p in model.state_dict().items()}
    database = SparsityLevelDatabase.build(model, calibration_ids, LADDER, inputs_at=0.5)
    for name, value in model.state_dict().items():  # the model comes back dense
        assert torch.equal(value, dense[name]), name
    reference = make_tiny_model("llama")
    prune_model(reference, calibration_ids, method="sparsegpt", sparsity=0.5, progress=False)
    name = "model.layers.2.mlp.down_proj"  # later blocks saw the earlier ones pruned at 0.5
    expected = dict(reference.named_parameters())[name + ".weight"]
    torch.testing.assert_close(database.weight(name, 1), expected, rtol=1e-4, atol=1e-5)
    from_dense = SparsityLevelDatabase.build(model, calibration_ids, LADDER)
    assert not torch.allclose(from_dense.weight(name, 1), expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="not a sparsity of the ladder"):
        SparsityLevelDatabase.build(model, calibration_ids, LADDER, inputs_at=0.55)


def test_switches_keep_the_mean_sparsity_and_stitching_equals_a_fresh_build(database, calibration_ids):
    problem = LevelSearchProblem(make_tiny_model("llama"), calibration_ids, 0.5, database)
    rng = np.random.default_rng(0)
    X = BudgetSampling()._do(problem, 8, random_state=rng)
    X = LevelSwitchMutation()._do(problem, X, random_state=rng)
    assert len({tuple(x) for x in X}) > 4
    assert all(database.mean_sparsity(x) == pytest.approx(0.5, abs=1e-12) for x in X)
    out = problem.evaluate(X, return_as_dictionary=True)
    assert (out["G"] <= 0).all() and np.isfinite(out["F"]).all()
    # scored in one block-major walk, each equals its own model's full forward; the model stays dense
    dense = make_tiny_model("llama")
    for x, f in zip(X[:3], out["F"][:3, 0]):
        stitched = copy.deepcopy(dense)
        for layer, level in zip(get_adapter(stitched).prunable_layers(stitched), x):
            layer.weight.copy_(database.weight(layer.name, level))
        assert f == pytest.approx(kl_to_dense(stitched, problem.reference), rel=1e-4)
    assert_same_weights(problem.model, dense)
    # any vector (pymoo's own operators make any) decodes onto the budget
    unbalanced = np.random.default_rng(1).integers(0, 3, (20, problem.n_var))
    assert all(database.mean_sparsity(problem.levels(x)) == pytest.approx(0.5, abs=1e-12) for x in unbalanced)
    assert all(np.array_equal(problem.levels(x), x) for x in X)  # what the operators make is kept
    # the working model after many swaps equals a model given those levels directly
    problem.stitch(X[3])
    fresh = make_tiny_model("llama")
    for layer, level in zip(get_adapter(fresh).prunable_layers(fresh), X[3]):
        layer.weight.copy_(database.weight(layer.name, level))
    with torch.no_grad():
        torch.testing.assert_close(problem.model(calibration_ids).logits, fresh(calibration_ids).logits)
    dense = make_tiny_model("llama")
    problem.restore_dense()
    dense_layers = get_adapter(dense).prunable_layers(dense)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(problem.layers, dense_layers))


def test_search_beats_uniform_where_layers_differ_and_keeps_the_budget(calibration_ids):
    model = make_tiny_model("llama")
    with torch.no_grad():  # layers of unequal importance: uniform sparsity is not the best
        for layer in (model.model.layers[0].mlp.gate_proj, model.model.layers[0].mlp.up_proj):
            layer.weight.mul_(0.05)
    database = SparsityLevelDatabase.build(model, calibration_ids, LADDER)
    problem = LevelSearchProblem(model, calibration_ids, 0.5, database)
    uniform = problem.kl(problem.uniform_x(0.5))
    problem.restore_dense()
    config = EvoPressConfig(0.5, method="sparsegpt", step=0.1, levels_each_side=1, database_inputs="dense",
                            n_offsprings=8, n_gen=10)
    choice = search_evopress(model, calibration_ids, config)
    assert choice.sparsity == pytest.approx(0.5, abs=1e-12) and choice.ladder == LADDER
    assert choice.calibration_kl < 0.95 * uniform
    assert len(set(choice.layer_sparsity.values())) > 1  # non-uniform
    # a dense-input database: the final model is pruned again block by block, unless told otherwise
    assert choice.final == {"weights": "pruned again"} and choice.front[0]["levels"] == choice.levels
    # pruned again block by block at the chosen sparsities: block 0 sees dense inputs either way
    from_database = choice.apply(copy.deepcopy(model), weights="database")
    for layer, level in zip(get_adapter(from_database).prunable_layers(from_database), choice.levels):
        assert torch.equal(layer.weight, database.weight(layer.name, level))  # exactly what was scored
    sequential = choice.apply(copy.deepcopy(model))
    for a, b in zip(get_adapter(from_database).prunable_layers(from_database),
                    get_adapter(sequential).prunable_layers(sequential)):
        assert float((b.weight == 0).float().mean()) == pytest.approx(choice.layer_sparsity[a.name], abs=0.01)
        assert torch.allclose(a.weight, b.weight, atol=1e-5) == (a.block_index == 0), a.name
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(  # left dense
        get_adapter(model).prunable_layers(model), problem.layers))


def test_resume_continues_the_level_search_to_the_same_result(database, calibration_ids, tmp_path):
    def run(directory, resume=False, **kwargs):
        problem = LevelSearchProblem(make_tiny_model("llama"), calibration_ids, 0.5, database)
        stages = halving_stages(1, 2, n_samples=4)
        algorithm = level_algorithm(problem, 1, 4, StagedSurvival(stages, "kl"))
        return run_search(problem, algorithm, ("n_gen", 4), SearchRun(directory, resume, seed=3), **kwargs)

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", callback=InterruptAt(3))
    assert json.loads((tmp_path / "b" / "state.json").read_text())["generation"] == 2
    resumed = run(tmp_path / "b", resume=True)
    np.testing.assert_array_equal(resumed.algorithm.pop[0].X, straight.algorithm.pop[0].X)
    assert resumed.algorithm.evaluator.n_eval == straight.algorithm.evaluator.n_eval
    # the stage scores were replayed as well: the log of both runs is the same, record for record
    log = {run: (tmp_path / run / "evaluations.jsonl").read_text() for run in "ab"}
    assert log["a"] == log["b"]
    assert '"stage"' in log["a"]


def test_a_front_over_a_sparsity_range(calibration_ids):
    choice = search_evopress(make_tiny_model("llama"), calibration_ids,
                             EvoPressConfig((0.4, 0.6), method="sparsegpt", step=0.1, levels_each_side=1,
                                            pop_size=6, n_offsprings=6, n_gen=3))
    sparsities = [point["sparsity"] for point in choice.front]
    assert len(sparsities) >= 2 and sparsities == sorted(sparsities, reverse=True)
    assert 0.4 - 1e-9 <= min(sparsities) and max(sparsities) <= 0.6 + 1e-9
    assert choice.sparsity == pytest.approx(sparsities[0])
    with pytest.raises(ValueError, match="outside the database's ladder"):
        LevelSearchProblem(make_tiny_model("llama"), calibration_ids, 0.8,
                           SparsityLevelDatabase.build(make_tiny_model("llama"), calibration_ids, LADDER))


def test_choose_level_method_picks_the_candidate_with_the_lowest_held_out_kl(calibration_ids, monkeypatch):
    """Each candidate prunes uniformly at the target (a range's sparsest end) block by block; the
    lowest KL to dense on the held-out windows wins, and the model comes back dense. A bad
    candidate or update is refused before any forward pass."""
    from optishear_moo.evaluation.divergence import DenseOutputs, kl_to_dense
    from optishear_moo.evopress import choose_level_method

    model = make_tiny_model("llama")
    windows = torch.randint(0, 384, (4, 32), generator=torch.Generator().manual_seed(2))
    dense = [layer.weight.clone() for layer in get_adapter(model).prunable_layers(model)]
    candidates = ("magnitude", "wanda", "sparsegpt")
    choice = choose_level_method(model, calibration_ids, (0.3, 0.6), windows, candidates)
    expected = {}
    for method in candidates:
        pruned = copy.deepcopy(model)
        prune_model(pruned, calibration_ids, method, 0.6, progress=False)
        expected[method] = kl_to_dense(pruned, DenseOutputs.build(model, windows))
    assert choice["kl"] == pytest.approx(expected, rel=1e-5)
    assert choice["method"] == min(expected, key=expected.get)
    assert len(set(expected.values())) == 3
    assert all(torch.equal(a.weight, b) for a, b in zip(get_adapter(model).prunable_layers(model), dense))
    monkeypatch.setattr(DenseOutputs, "build", lambda *args, **kwargs: pytest.fail("checks come first"))
    with pytest.raises(ValueError, match="method 'obc' is not a pruning method"):
        choose_level_method(model, calibration_ids, 0.5, windows, ("wanda", "obc"))
    with pytest.raises(ValueError, match="is not a weight update"):
        choose_level_method(model, calibration_ids, 0.5, windows, update="ols")


def test_a_full_score_cache_is_emptied_without_losing_the_scores_asked_for(database, calibration_ids):
    problem = LevelSearchProblem(make_tiny_model("llama"), calibration_ids, 0.5, database)
    problem.score_cache_size = 1
    uniform = problem.uniform_x(0.5)
    moved, other = uniform.copy(), uniform.copy()
    pair = problem.level_groups[0][:2]  # one step up and one down in a group keeps the size
    moved[pair] += [1, -1]
    other[pair] += [-1, 1]
    first = problem.kls([uniform, moved])
    again = problem.kls([uniform, other])  # one held, one new: the full cache is emptied first
    assert again[0] == first[0] and problem.kls([other]) == again[1:]
    problem.restore_dense()
