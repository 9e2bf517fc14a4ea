"""search_optishear: the one-call driver the CLI uses."""

import numpy as np
import pytest

from optishear_moo import load_calibration, search_optishear


def test_the_front_plan_is_chosen_on_held_out_windows(tiny_llama, calibration, tiny_tokenizer, tmp_path):
    validation = load_calibration(tiny_tokenizer, 4, 32, seed=0, source="wikitext2-valid")
    result = search_optishear(tiny_llama, calibration, 0.5, objectives=("kl", "reconstruction"),
                              pop_size=6, n_gen=2, batch_size=3, search_update=True, validation=validation)
    held_out = [point["validation_kl"] for point in result.front]
    assert len(held_out) == len(result.front) and all(np.isfinite(held_out))
    best = int(np.argmin(held_out))
    assert result.chosen.to_dict()["block_sparsity"] == result.front[best]["plan"]["block_sparsity"]
    assert result.chosen.update == result.front[best]["plan"]["update"]
    assert result.chosen_by == "KL on held-out validation windows"
    result.save(tmp_path)
    assert (tmp_path / "best_plan.json").is_file() and (tmp_path / "pareto.png").is_file()
    without = search_optishear(tiny_llama, calibration, 0.5, objectives=("kl", "reconstruction"),
                               pop_size=6, n_gen=2, batch_size=3)
    assert "validation_kl" not in without.front[0] and without.chosen_by.startswith("first objective")
    with pytest.raises(ValueError, match="at least 1"):
        search_optishear(tiny_llama, calibration, 0.5, n_gen=0)
