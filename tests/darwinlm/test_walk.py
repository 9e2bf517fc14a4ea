"""DarwinLM scored block by block (``scoring="walk"``): the same one-shot KL as the sliced model,
for a model in memory and for one streamed from disk, which the whole one-shot pipeline runs on."""

import dataclasses

import numpy as np
import pytest
import torch

from optishear_moo import load_model
from optishear_moo.darwinlm import DarwinLMConfig, StructuredLevelDatabase, search_darwinlm
from optishear_moo.darwinlm.fitness import StructuredEvaluator
from optishear_moo.darwinlm.problem import StructuredPruningProblem, darwinlm_algorithm
from optishear_moo.errors import SettingError
from optishear_moo.models import get_adapter
from optishear_moo.models.streaming import is_streamed
from optishear_moo.search import SearchRun, halving_stages
from tests.conftest import make_tiny_model

# (attention, mlp) per block of the tiny Llama (2 KV groups, 8 MLP levels): the top levels skip a unit
POPULATION = [
    [[0, 0], [0, 0], [0, 0]],
    [[1, 3], [0, 8], [2, 1]],
    [[1, 3], [0, 8], [0, 4]],  # shares its first two blocks with the one before
    [[2, 8], [1, 2], [1, 5]],
    [[1, 3], [0, 8], [2, 1]],  # a duplicate
]


def test_the_walk_gives_the_sliced_models_kl(calibration):
    model = make_tiny_model("llama")
    database = StructuredLevelDatabase.build(model, calibration, mlp_levels=8)
    sliced = StructuredEvaluator(model, database, calibration, batch_size=3, scoring="slice")
    expected = [sliced.evaluate(levels) for levels in POPULATION]
    sliced.restore_dense()
    walker = StructuredEvaluator(model, database, calibration, batch_size=3, scoring="walk")
    assert walker.walks and not sliced.walks
    progress = []
    scores = walker.evaluate_many(POPULATION, on_candidate=lambda: progress.append(1))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-7)
    assert scores[0] == pytest.approx(0, abs=1e-6) and len(set(np.round(scores[1:4], 6))) == 3
    assert len(progress) == len(POPULATION)
    assert walker.scored_tokens == len(POPULATION) * calibration.numel()
    # half the windows: the walk scores the first ones, as the sliced forward does
    half = walker.evaluate_many(POPULATION[1:2], n_samples=2)[0]
    assert half == pytest.approx(sliced.evaluate(POPULATION[1], n_samples=2), rel=1e-5)
    sliced.restore_dense()
    dense = make_tiny_model("llama")
    for block, reference in zip(get_adapter(model).blocks(model), get_adapter(dense).blocks(dense)):
        for name, weight in block.state_dict().items():
            torch.testing.assert_close(weight, reference.state_dict()[name], rtol=0, atol=0)  # put back


def test_a_streamed_model_runs_one_shot_darwinlm_and_finds_what_the_model_in_memory_finds(
        tiny_model_dir, calibration, tmp_path):
    config = DarwinLMConfig(target_compression=2.0, selection="one-shot", mlp_levels=8, pop_size=2,
                            n_offsprings=4, n_gen=3, batch_size=3)
    ordinary, _ = load_model(str(tiny_model_dir), device="cpu")
    expected = search_darwinlm(ordinary, calibration, config, SearchRun(seed=0))
    model, _ = load_model(str(tiny_model_dir), device="cpu", offload="disk")
    on_disk = dataclasses.replace(config, database_dir=str(tmp_path / "db"))
    result = search_darwinlm(model, calibration, on_disk, SearchRun(seed=0))
    assert result.database.dense is None and not result.database._entries  # nothing of it in memory
    assert len(list((tmp_path / "db").iterdir())) == 2 * 3  # a file per (block, unit)
    assert is_streamed(model)  # the search read the blocks, changed nothing, kept nothing
    assert result.levels == expected.levels
    assert result.calibration_kl == pytest.approx(expected.calibration_kl, rel=1e-5)
    assert result.scored_tokens == expected.scored_tokens > 0
    result.apply(model)
    expected.apply(ordinary)
    with torch.no_grad():
        torch.testing.assert_close(model(calibration).logits, ordinary(calibration).logits, rtol=1e-4,
                                   atol=1e-5)
    assert sum(p.numel() for p in model.model.layers.parameters()) == sum(
        p.numel() for p in ordinary.model.layers.parameters())


def test_a_streamed_model_refuses_what_needs_it_in_memory_before_any_work(tiny_model_dir, calibration,
                                                                           tmp_path):
    model, _ = load_model(str(tiny_model_dir), device="cpu", offload="disk")
    with pytest.raises(SettingError, match="training-aware selection fine-tunes candidates in memory"):
        search_darwinlm(model, calibration, DarwinLMConfig(target_compression=2.0, mlp_levels=8))
    with pytest.raises(SettingError, match="scored block by block: use (--)?scoring walk or auto"):
        StructuredPruningProblem(model, calibration, 2.0, mlp_levels=8, scoring="slice")
    with pytest.raises(SettingError, match="scoring .fast. is unknown"):
        DarwinLMConfig(scoring="fast")
    (tmp_path / "a file").write_text("")
    with pytest.raises(SettingError, match="database_dir .* cannot hold the database"):
        search_darwinlm(model, calibration, DarwinLMConfig(target_compression=2.0, mlp_levels=8,
                                                           selection="one-shot",
                                                           database_dir=str(tmp_path / "a file")))
    problem = StructuredPruningProblem(model, calibration, 2.0, mlp_levels=8, batch_size=3)
    assert problem.evaluator.walks
    with pytest.raises(SettingError, match="training-aware selection"):
        darwinlm_algorithm(problem, 1, 4, halving_stages(1, finetune_tokens=[32]))
    darwinlm_algorithm(problem, 2, 4, halving_stages(2, n_stages=2, n_samples=4))  # no fine-tune: fine


def test_the_walk_refuses_output_projections_with_a_bias(calibration):
    model = make_tiny_model("llama")
    block = model.model.layers[1]
    block.mlp.down_proj.bias = torch.nn.Parameter(torch.zeros(block.mlp.down_proj.out_features))
    with pytest.raises(SettingError, match="output projection with a bias"):
        StructuredPruningProblem(model, calibration, 2.0, mlp_levels=8, scoring="walk")
    assert not StructuredPruningProblem(model, calibration, 2.0, mlp_levels=8).evaluator.walks  # auto slices


def test_auto_scoring_walks_a_model_in_memory(calibration):
    model = make_tiny_model("llama")
    assert StructuredPruningProblem(model, calibration, 2.0, mlp_levels=8).evaluator.walks
    sliced = StructuredPruningProblem(model, calibration, 2.0, mlp_levels=8, scoring="slice")
    assert not sliced.evaluator.walks
