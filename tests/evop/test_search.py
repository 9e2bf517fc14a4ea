import math

import pytest

from optishear_moo import EvoPConfig, SearchRun, search_evop
from optishear_moo.errors import SettingError
from tests.evop.helpers import deep_model


@pytest.mark.parametrize("objective", ["kl", "ppl"])
def test_a_search_started_from_sleb_never_ends_worse_and_counts_every_evaluation(objective, calibration):
    """SLEB's greedy choice joins the first population: the elitist search ends at least as good
    on its own objective, after at least as many evaluations as SLEB spent, all counted."""
    model = deep_model(n_layers=8, seed=3)
    sleb = search_evop(model, calibration, EvoPConfig(3, "sleb", objective))
    assert sleb.n_evaluations == 8 + 7 + 6  # one pass per candidate of each greedy step
    shortgpt = search_evop(model, calibration, EvoPConfig(3, "shortgpt", objective))
    assert shortgpt.n_evaluations == 1
    assert search_evop(model, calibration, EvoPConfig(3, "last")).n_evaluations == 0
    config = EvoPConfig(3, "evop", objective, pop_size=4, n_gen=2, warm_start=("sleb", "shortgpt"))
    searched = search_evop(model, calibration, config, SearchRun(seed=0))
    assert searched.scores[objective] <= sleb.scores[objective] + 1e-9
    assert searched.scores[objective] <= shortgpt.scores[objective] + 1e-9
    # the first population, then up to one more (offspring that duplicate a member are not scored)
    warm = sleb.n_evaluations + shortgpt.n_evaluations
    assert warm + 4 < searched.n_evaluations <= warm + 4 * 2
    plain = search_evop(model, calibration, EvoPConfig(3, "evop", objective, pop_size=4, n_gen=2))
    assert 1 + 4 < plain.n_evaluations <= 1 + 4 * 2  # ShortGPT's pass, then the search's


def test_warm_start_names_the_heuristics(calibration):
    assert EvoPConfig(warm_start="sleb, last").warm_start == ("sleb", "last")
    assert EvoPConfig().to_dict()["warm_start"] == ["last", "shortgpt"]
    with pytest.raises(SettingError, match="warm_start.*'owl'.*last, shortgpt, sleb"):
        EvoPConfig(warm_start=("owl",))


def test_a_one_plus_lambda_search_needs_one_count():
    assert EvoPConfig(algorithm="1+lambda").algorithm == "1+lambda"
    with pytest.raises(SettingError, match="algorithm 'cmaes' is not a block-removal search"):
        EvoPConfig(algorithm="cmaes")
    with pytest.raises(SettingError, match="n_remove range needs algorithm ga"):
        EvoPConfig((2, 4), algorithm="1+lambda")


@pytest.mark.parametrize("algorithm", ["ga", "1+lambda"])
def test_an_evaluation_budget_scores_at_least_that_many_candidates(algorithm, calibration, tmp_path):
    """``n_evals`` replaces ``n_gen``: the search scores at least that many candidates of its own
    and stops in the generation that reaches the count; a resumed run may raise it."""
    model = deep_model(n_layers=8, seed=3)
    config = dict(pop_size=4, n_gen=1, warm_start=("last",), algorithm=algorithm)  # 'last' costs none
    full = search_evop(model, calibration, EvoPConfig(3, "evop", n_evals=13, **config), SearchRun(seed=1))
    assert 13 <= full.n_evaluations < 13 + 4
    search_evop(model, calibration, EvoPConfig(3, "evop", n_evals=6, **config),
                SearchRun(tmp_path, seed=1))
    resumed = search_evop(model, calibration, EvoPConfig(3, "evop", n_evals=13, **config),
                          SearchRun(tmp_path, resume=True, seed=1))
    assert (resumed.removed_blocks, resumed.n_evaluations) == (full.removed_blocks, full.n_evaluations)
    with pytest.raises(SettingError, match="n_evals must be an integer of at least 1"):
        EvoPConfig(n_evals=0)
    with pytest.raises(SettingError, match="n_evals budgets method evop's search; sleb spends a fixed"):
        EvoPConfig(3, "sleb", n_evals=10)


def test_multi_fidelity_selection_scores_shares_of_a_pass_and_never_loses_its_start(calibration, tmp_path):
    """With ``n_stages`` the offspring are scored on a share of the windows and only the best on
    more: each new (candidate, windows) pair counts its share of a pass, the parent meets the
    survivors on all windows (elitist there), and a pass budget resumes to the same result."""
    model = deep_model(n_layers=8, seed=3)
    sleb = search_evop(model, calibration, EvoPConfig(3, "sleb"))
    config = dict(pop_size=6, algorithm="1+lambda", n_stages=2, warm_start=("sleb",))
    staged = search_evop(model, calibration, EvoPConfig(3, "evop", n_gen=4, **config), SearchRun(seed=0))
    assert staged.scores["kl"] <= sleb.scores["kl"] + 1e-9
    # 6 windows, 2 stages: offspring on 3, the best 2 and the parent on 6. SLEB's start: half a
    # pass and one; each generation at most 6 halves and 2 whole passes (the parent's is cached)
    own = staged.n_evaluations - sleb.n_evaluations
    assert 2 + 3 <= own <= math.ceil(1.5 + 4 * (3 + 2))
    budgeted = EvoPConfig(3, "evop", n_evals=12, **config)
    full = search_evop(model, calibration, budgeted, SearchRun(seed=1))
    assert 12 <= full.n_evaluations - sleb.n_evaluations < 12 + 5 + 1
    search_evop(model, calibration, EvoPConfig(3, "evop", n_evals=6, **config), SearchRun(tmp_path, seed=1))
    resumed = search_evop(model, calibration, budgeted, SearchRun(tmp_path, resume=True, seed=1))
    assert (resumed.removed_blocks, resumed.n_evaluations) == (full.removed_blocks, full.n_evaluations)
    assert resumed.scores == pytest.approx(full.scores)
    with pytest.raises(SettingError, match="n_stages 2 .*needs method evop with algorithm 1\\+lambda"):
        EvoPConfig(3, "evop", n_stages=2)
    with pytest.raises(SettingError, match="n_stages 3 .*needs method evop"):
        EvoPConfig(3, "sleb", n_stages=3, algorithm="1+lambda")
    with pytest.raises(SettingError, match="n_stages must be an integer of at least 1"):
        EvoPConfig(n_stages=0)
    assert "n_stages" not in EvoPConfig().to_dict() and EvoPConfig(**config).to_dict()["n_stages"] == 2


def test_multi_fidelity_selection_on_calibration_perplexity(calibration):
    """``objective="ppl"`` ranks every stage by calibration perplexity: started from SLEB's choice
    (greedy by that perplexity) the staged search ends at or below SLEB's perplexity, whatever its KL."""
    model = deep_model(n_layers=8, seed=3)
    sleb = search_evop(model, calibration, EvoPConfig(3, "sleb"))
    config = EvoPConfig(3, "evop", objective="ppl", n_gen=4, pop_size=6, algorithm="1+lambda", n_stages=2,
                        warm_start=("sleb",))
    staged = search_evop(model, calibration, config, SearchRun(seed=0))
    assert staged.objective == "ppl" and staged.scores["ppl"] <= sleb.scores["ppl"] * (1 + 1e-9)
    assert staged.front[0]["ppl"] == pytest.approx(staged.scores["ppl"])
