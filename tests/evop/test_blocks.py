import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from optishear_moo.evop.blocks import block_influence, last_blocks, remove_blocks_, shortgpt_blocks
from optishear_moo.evop.fitness import BlockRemovalEvaluator
from optishear_moo.models import get_adapter
from tests.evop.helpers import deep_model, skipping


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2", "opt"])
def test_removed_model_equals_dense_model_with_blocks_skipped(family, calibration):
    model = deep_model(family, n_layers=5)
    removed = [1, 3]
    handles = skipping(model, removed)
    with torch.no_grad():
        expected = model(input_ids=calibration, use_cache=False).logits
    for handle in handles:
        handle.remove()
    remove_blocks_(model, removed)
    with torch.no_grad():
        actual = model(input_ids=calibration, use_cache=False).logits
    torch.testing.assert_close(actual, expected)
    assert model.config.num_hidden_layers == 3 and model.config.removed_blocks == removed
    indices = [m.layer_idx for m in model.modules() if hasattr(m, "layer_idx")]
    assert indices == sorted(indices) and set(indices) == {0, 1, 2}
    if getattr(model.config, "layer_types", None) is not None:
        assert len(model.config.layer_types) == 3
    remove_blocks_(model, [0])  # a second removal records original indices
    assert model.config.removed_blocks == [0, 1, 3]


def test_removed_model_generates_with_kv_cache_saves_and_reloads(calibration, tmp_path):
    model = deep_model()
    remove_blocks_(model, [2, 4])
    prompt = calibration[:1, :8]
    cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 4 and reloaded.config.removed_blocks == [2, 4]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(calibration).logits, model(calibration).logits)


def test_block_influence_finds_a_block_that_does_nothing(calibration):
    model = deep_model()
    block = get_adapter(model).blocks(model)[3]
    block.self_attn.o_proj.weight.zero_()
    block.mlp.down_proj.weight.zero_()  # residual stream passes through unchanged
    influence = block_influence(model, calibration, batch_size=4)
    assert influence[3] == pytest.approx(0.0, abs=1e-6) and (np.delete(influence, 3) > 1e-4).all()
    assert shortgpt_blocks(model, calibration, 1) == [3]
    cached = BlockRemovalEvaluator(model, calibration, batch_size=4).block_influence()
    np.testing.assert_allclose(cached, influence, rtol=1e-6, atol=1e-9)  # no second dense pass needed
    assert last_blocks(6, 2) == [3, 4]
