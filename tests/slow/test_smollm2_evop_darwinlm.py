"""EvoP and DarwinLM on the real SmolLM2-135M with tiny budgets (slow; run in CI)."""

import copy

import pytest
import torch

from optishear_moo import (
    CalibrationSet,
    DarwinLMConfig,
    EvoPConfig,
    load_calibration,
    load_model,
    search_darwinlm,
    search_evop,
)
from optishear_moo.darwinlm import kept_parameters
from optishear_moo.evaluation import perplexity
from optishear_moo.evop.blocks import last_blocks, remove_blocks_

pytestmark = [pytest.mark.slow, pytest.mark.ci]

EVAL = dict(seq_len=1024, max_segments=2)


def test_evop_with_cluster_calibration_beats_removing_the_last_blocks(smollm2):
    model, tokenizer = smollm2
    calibration = load_calibration(tokenizer, 4, 128, seed=0, sampling="cluster", n_clusters=4, model=model)
    choice = search_evop(model, calibration, EvoPConfig(3, pop_size=4, n_gen=2))
    assert len(choice.removed_blocks) == 3 and 29 not in choice.removed_blocks
    dense = perplexity(model, tokenizer, **EVAL).perplexity
    ppl = {}
    for label, removed in (("evop", choice.removed_blocks), ("last", last_blocks(30, 3))):
        pruned = remove_blocks_(copy.deepcopy(model), removed)
        assert pruned.config.num_hidden_layers == 27
        ppl[label] = perplexity(pruned, tokenizer, **EVAL).perplexity
    assert dense < ppl["evop"] < 3 * dense, ppl
    assert ppl["evop"] * 10 < ppl["last"], ppl


def test_darwinlm_training_aware_search_slices_a_model_that_reloads(smollm2, tmp_path):
    model, tokenizer = smollm2
    model = copy.deepcopy(model)  # the search slices its working model in place
    calibration = load_calibration(tokenizer, 2, 128, seed=0)
    training = load_calibration(tokenizer, 4, 64, seed=1, source="wikitext2-valid")
    config = DarwinLMConfig(1.5, finetune_tokens=(128, 256), mlp_levels=2, n_offsprings=2, n_gen=2)
    choice = search_darwinlm(model, CalibrationSet(calibration, training=training), config)
    assert choice.compression >= 1.5 and choice.finetuned_kl is not None
    dense_parameters = sum(p.numel() for p in model.parameters())
    database = choice.database
    choice.apply(model)
    removed = dense_parameters - sum(p.numel() for p in model.parameters())
    assert removed == kept_parameters(database, [[0, 0]] * 30) - kept_parameters(database, choice.levels)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded, _ = load_model(str(tmp_path), device="cpu")
    ids = calibration[:2]
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    ppl = perplexity(reloaded, tokenizer, **EVAL).perplexity
    assert 10 < ppl < 10_000
