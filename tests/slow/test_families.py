"""Real models of the other families the README lists (Gemma 3, Qwen2), from the split wheels of
../shared/ASSETS.md; skipped when their parts are not installed. Slow: minutes each on CPU."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

from optishear_moo import load_calibration, load_model, prune_model
from optishear_moo.activations import capture_block_inputs, run_block
from optishear_moo.data import load_corpus
from optishear_moo.evaluation import DenseOutputs, kl_to_dense, perplexity
from optishear_moo.models import get_adapter
from optishear_moo.models.loading import SPLIT_MODELS
from optishear_moo.pruning import DenseSnapshot

pytestmark = pytest.mark.slow

FAMILIES = ["gemma3-270m", "qwen2.5-coder-0.5b"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    name = request.param
    if any(importlib.util.find_spec(package) is None for package, _ in SPLIT_MODELS[name].parts):
        pytest.skip(f"{name} is not installed: {SPLIT_MODELS[name].install}")
    model, tokenizer = load_model(name, device="cpu")
    return name, model, tokenizer


def test_dense_perplexity_equals_a_hand_computation(family):
    name, model, tokenizer = family
    text = "\n\n".join(load_corpus("wikitext2-test").splitlines(keepends=True))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    adds_bos = tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id
    width = 256 - adds_bos
    segments = torch.tensor(ids[: 2 * width]).view(2, width)
    if adds_bos:
        segments = torch.cat([torch.full((2, 1), tokenizer.bos_token_id), segments], dim=1)
    with torch.no_grad():
        logits = model(segments).logits.float()
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), segments[:, 1:].reshape(-1))
    assert perplexity(model, tokenizer, 256, 2).perplexity == pytest.approx(math.exp(float(nll)), rel=1e-4)
    assert adds_bos == name.startswith("gemma")


def test_block_replay_equals_a_full_forward(family):
    _, model, tokenizer = family
    adapter = get_adapter(model)
    calibration = load_calibration(tokenizer, 2, 128, seed=0)
    inputs = capture_block_inputs(model, calibration, 2)
    hidden = inputs.hidden
    for index, block in enumerate(adapter.blocks(model)):
        hidden = [run_block(block, h, k) for h, k in zip(hidden, inputs.block_kwargs(index))]
    with torch.no_grad():
        expected = model.base_model(input_ids=calibration, use_cache=False).last_hidden_state
    torch.testing.assert_close(adapter.head_inputs(model, torch.cat(hidden)), expected, rtol=1e-3, atol=1e-3)


def test_wanda_and_its_update_prune_sanely(family):
    _, model, tokenizer = family
    calibration = load_calibration(tokenizer, 8, 256, seed=0)
    held_out = load_calibration(tokenizer, 4, 256, seed=1, source="wikitext2-valid")
    reference = DenseOutputs.build(model, held_out)
    snapshot = DenseSnapshot.of(model)
    kl = {}
    try:
        for update in ("none", "obs"):
            result = prune_model(model, calibration, method="wanda", sparsity=0.5, update=update,
                                 progress=False)
            assert result.report.total == pytest.approx(0.5, abs=1e-3)
            kl[update] = kl_to_dense(model, reference)
            snapshot.restore()
    finally:
        snapshot.restore()
    assert math.isfinite(kl["none"]) and kl["obs"] < kl["none"], kl
