"""SmolLM2-135M end to end (slow: about a minute each on two CPU cores)."""

import json
import math

import numpy as np
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from optishear_moo import load_calibration, prune_model
from optishear_moo.cli import main
from optishear_moo.evaluation import perplexity
from optishear_moo.pruning import DenseSnapshot

pytestmark = pytest.mark.slow

EVAL = dict(seq_len=1024, max_segments=4)


@pytest.fixture(scope="module")
def dense_setup(smollm2):
    model, tokenizer = smollm2
    calibration = load_calibration(tokenizer, n_samples=16, seq_len=256, seed=0)
    dense = perplexity(model, tokenizer, **EVAL)
    return model, tokenizer, calibration, dense


@pytest.mark.ci
def test_wanda_half_sparsity_stays_within_a_sane_band_of_dense(dense_setup):
    model, tokenizer, calibration, dense = dense_setup
    snapshot = DenseSnapshot.of(model)
    try:
        result = prune_model(model, calibration, method="wanda", sparsity=0.5, progress=False)
        pruned = perplexity(model, tokenizer, **EVAL)
    finally:
        snapshot.restore()
    assert result.report.total == pytest.approx(0.5, abs=1e-3)
    assert 10 < dense.perplexity < 60  # Q4-dequantised SmolLM2 scores ~23 on these segments
    assert math.isfinite(pruned.perplexity)
    assert dense.perplexity < pruned.perplexity < 4 * dense.perplexity
    assert perplexity(model, tokenizer, **EVAL).perplexity == pytest.approx(dense.perplexity)


def test_a_weight_update_makes_wanda_better_at_60_percent(dense_setup):  # not in CI: ~1 min
    model, tokenizer, calibration, _ = dense_setup
    snapshot = DenseSnapshot.of(model)
    ppl = {}
    try:
        for update in ("none", "obs"):
            prune_model(model, calibration, method="wanda", sparsity=0.6, update=update, progress=False)
            ppl[update] = perplexity(model, tokenizer, **EVAL).perplexity
            snapshot.restore()
    finally:
        snapshot.restore()
    # measured on two CPU cores: 101.4 masked only, 92.4 with the OBS update (a 9% gain)
    assert ppl["obs"] < 0.95 * ppl["none"], ppl


@pytest.mark.ci
def test_zero_shot_piqa_is_above_chance(smollm2):
    import importlib.util
    import os

    if importlib.util.find_spec("lm_eval") is None and not os.environ.get("CI"):
        pytest.skip("lm-evaluation-harness is not installed (bash scripts/install.sh --eval)")
    from optishear_moo.evaluation.zero_shot import zero_shot

    model, tokenizer = smollm2
    result = zero_shot(model, tokenizer, ["piqa"], limit=50)
    piqa = result["tasks"]["piqa"]
    assert piqa["n"] == 50 and piqa["acc"] > 0.5, piqa  # two choices: chance is 0.5


def test_magnitude_is_far_worse_than_wanda(dense_setup):
    model, tokenizer, calibration, _ = dense_setup
    snapshot = DenseSnapshot.of(model)
    ppl = {}
    for method in ("magnitude", "wanda"):
        prune_model(model, calibration, method=method, sparsity=0.5, progress=False)
        ppl[method] = perplexity(model, tokenizer, **EVAL).perplexity
        snapshot.restore()
    assert ppl["magnitude"] > 2 * ppl["wanda"]


def test_cli_saved_model_reloads_with_the_same_perplexity_at_half_the_size(tmp_path):
    """The quantized GGUF is pruned in float32 and saved in bfloat16 by default: the saved model
    reloads with the perplexity the report gives it, at half a float32 save's size."""
    sizes = {}
    for dtype in ("auto", "float32"):
        output = tmp_path / dtype
        code = main(["prune", "--method", "wanda", "--sparsity", "0.5", "--n-samples", "8",
                     "--seq-len", "128", "--eval-segments", "2", "--save-dtype", dtype,
                     "--output", str(output), "--quiet"])
        assert code == 0
        sizes[dtype] = sum(path.stat().st_size for path in (output / "model").glob("*.safetensors"))
    report = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert report["saved_dtype"] == "bfloat16" and report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "auto" / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "auto" / "model")
    reloaded = perplexity(model, tokenizer, seq_len=1024, max_segments=2)
    assert reloaded.perplexity == pytest.approx(report["saved_ppl"], rel=1e-4)
    assert report["saved_ppl"] == pytest.approx(report["pruned_ppl"], rel=0.02)
    assert sizes["auto"] < 0.55 * sizes["float32"]


@pytest.mark.ci
def test_small_search_is_no_worse_than_uniform_wanda(smollm2):
    from optishear_moo import OptiShearProblem
    from optishear_moo.optishear import MetaMetric
    from optishear_moo.search import SearchRun, make_algorithm, run_search

    model, tokenizer = smollm2
    calibration = load_calibration(tokenizer, n_samples=8, seq_len=128, seed=0)
    problem = OptiShearProblem(model, calibration, target_sparsity=0.5)
    algorithm = make_algorithm("nsga2", problem, pop_size=6)
    result = run_search(problem, algorithm, ("n_gen", 2), SearchRun(seed=1))
    best = result.X[np.argmin(result.F[:, 0])]
    ppl = {}
    for label, x in (("search", best), ("wanda", problem.encode(MetaMetric.wanda()))):
        snapshot = DenseSnapshot.of(model)
        try:
            problem.decode(x).apply(model)
            ppl[label] = perplexity(model, tokenizer, **EVAL).perplexity
        finally:
            snapshot.restore()
    assert ppl["search"] <= ppl["wanda"] * 1.01, ppl
