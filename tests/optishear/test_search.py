"""search_optishear: OptiShear's pipeline in one function."""

import numpy as np
import pytest

from optishear_moo import CalibrationSet, OptiShearConfig, SearchRun, load_calibration, search_optishear
from optishear_moo.pruning import DenseSnapshot


def test_the_front_plan_is_chosen_on_held_out_windows(tiny_llama, calibration, tiny_tokenizer, tmp_path):
    validation = load_calibration(tiny_tokenizer, 4, 32, seed=0, source="wikitext2-valid")
    config = OptiShearConfig(0.5, objectives=("kl", "reconstruction"), pop_size=6, n_gen=2, batch_size=3,
                             search_update=True)
    result = search_optishear(tiny_llama, CalibrationSet(calibration, validation=validation), config)
    held_out = [point["validation_kl"] for point in result.front]
    assert len(held_out) == len(result.front) and all(np.isfinite(held_out))
    best = int(np.argmin(held_out))
    assert result.chosen.to_dict()["block_sparsity"] == result.front[best]["plan"]["block_sparsity"]
    assert result.chosen.update == result.front[best]["plan"]["update"]
    assert result.chosen_by == "KL on held-out validation windows"
    result.save(tmp_path)
    assert (tmp_path / "best_plan.json").is_file() and (tmp_path / "pareto.png").is_file()
    config = OptiShearConfig(0.5, pop_size=6, n_gen=2, batch_size=3)
    without = search_optishear(tiny_llama, calibration, config)
    assert "validation_kl" not in without.front[0] and without.chosen_by.startswith("first objective")


def test_apply_prunes_any_point_from_the_pruning_windows(tiny_llama, calibration, tiny_tokenizer):
    prune = load_calibration(tiny_tokenizer, 6, 48, seed=1)
    result = search_optishear(tiny_llama, CalibrationSet(calibration, prune=prune),
                              OptiShearConfig(0.5, pop_size=4, n_gen=1, batch_size=3))
    snapshot = DenseSnapshot.of(tiny_llama)
    masks = {}
    for point in (None, len(result.front) - 1):
        result.apply(tiny_llama, point)
        masks[point] = [layer.weight == 0 for layer in snapshot.layers]
        snapshot.restore()
    result.plan().apply(tiny_llama, prune)  # the chosen plan, pruned from the pruning windows
    assert all((layer.weight == 0).equal(mask) for layer, mask in zip(snapshot.layers, masks[None]))
    snapshot.restore()
    with pytest.raises(ValueError, match="point must index the front"):
        result.apply(tiny_llama, len(result.front))


def test_configs_are_checked_when_made():
    for values, message in (({"n_gen": 0}, "n_gen must be an integer of at least 1"),
                            ({"n_evals": 0}, "n_evals must be an integer of at least 1"),
                            ({"target_sparsity": (0.7, 0.3)}, "needs low < high"),
                            ({"target_sparsity": 1.2}, r"target_sparsity must be in \[0, 1\)"),
                            ({"layerwise": "bogus"}, "layerwise 'bogus' is unknown"),
                            ({"low_fidelity": 0}, "low_fidelity must be in"),
                            ({"algorithm": "cmaes"}, "single-objective"),
                            ({"objectives": ("kl", "density")}, "density objective needs"),
                            ({"update": "ols"}, "is not a weight update")):
        with pytest.raises(ValueError, match=message):
            OptiShearConfig(**values)


def test_an_evaluation_budget_scores_at_least_that_many_candidates(tiny_llama, calibration, tmp_path):
    """``n_evals`` replaces ``n_gen``: the search stops in the generation that reaches the count,
    and a resumed run may raise it."""
    config = dict(pop_size=4, n_gen=1, batch_size=3)
    full = search_optishear(tiny_llama, calibration, OptiShearConfig(0.5, n_evals=11, **config),
                            SearchRun(seed=2))
    assert 11 <= full.n_evaluations < 11 + 4
    search_optishear(tiny_llama, calibration, OptiShearConfig(0.5, n_evals=5, **config),
                     SearchRun(tmp_path, seed=2))
    resumed = search_optishear(tiny_llama, calibration, OptiShearConfig(0.5, n_evals=11, **config),
                               SearchRun(tmp_path, resume=True, seed=2))
    assert resumed.n_evaluations == full.n_evaluations
    assert resumed.chosen.to_dict() == full.chosen.to_dict()
