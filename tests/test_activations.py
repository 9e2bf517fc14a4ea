import pytest
import torch

from optishear_moo.activations import (
    InputStatistics,
    capture_block_inputs,
    collect_input_statistics,
    run_block,
    sequential_blocks,
)
from optishear_moo.models import get_adapter
from tests.conftest import make_tiny_model


def _raw_inputs(model, calibration):
    """Every prunable layer's full inputs, gathered naively, for hand computation."""
    layers = get_adapter(model).prunable_layers(model)
    captured = {layer.name: [] for layer in layers}
    handles = [layer.module.register_forward_hook(
        lambda m, args, out, name=layer.name: captured[name].append(args[0].reshape(-1, args[0].shape[-1])))
        for layer in layers]
    with torch.no_grad():
        model(calibration)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(chunks) for name, chunks in captured.items()}


def test_one_shot_statistics_match_hand_computation(tiny_llama, calibration):
    statistics = collect_input_statistics(tiny_llama, calibration, batch_size=4, with_gram=True)
    raw = _raw_inputs(tiny_llama, calibration)
    assert set(statistics) == set(raw)
    for name, x in raw.items():
        s = statistics[name]
        assert s.count == calibration.numel() == x.shape[0]
        torch.testing.assert_close(s.l2_norm, x.norm(dim=0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s.mean, x.mean(dim=0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(s.variance, x.var(dim=0, unbiased=False), rtol=1e-3, atol=1e-5)
        torch.testing.assert_close(s.gram, x.t() @ x, rtol=1e-4, atol=1e-4)


def test_hooks_are_removed(tiny_llama, calibration):
    collect_input_statistics(tiny_llama, calibration)
    list(sequential_blocks(tiny_llama, calibration, progress=False))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_llama.modules())


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gpt2", "opt"])
def test_blocks_replayed_from_captured_inputs_reproduce_the_model(family, calibration):
    model = make_tiny_model(family)
    adapter = get_adapter(model)
    inputs = capture_block_inputs(model, calibration, batch_size=4)
    hidden = inputs.hidden
    for index, block in enumerate(adapter.blocks(model)):
        hidden = [run_block(block, h, k) for h, k in zip(hidden, inputs.block_kwargs(index))]
    final = adapter.head_inputs(model, torch.cat(hidden))
    with torch.no_grad():
        expected = model.base_model(input_ids=calibration, use_cache=False).last_hidden_state
    torch.testing.assert_close(final, expected, rtol=1e-4, atol=1e-5)
    assert not any(hasattr(block, "forward") and "forward" in vars(block) for block in adapter.blocks(model))


def test_sequential_mode_sees_the_already_pruned_blocks(tiny_llama, calibration):
    dense = collect_input_statistics(tiny_llama, calibration)
    seen = {}
    for index, layers, statistics in sequential_blocks(tiny_llama, calibration, 4, progress=False):
        seen.update(statistics)
        if index == 0:  # prune block 0 heavily before block 1 is visited
            for layer in layers:
                layer.weight[:, ::2] = 0.0
    # block 0 saw the dense inputs; block 1 saw the outputs of the pruned block 0, exactly what a
    # one-shot pass of the now-pruned model gives
    after = collect_input_statistics(tiny_llama, calibration)
    name0 = "model.layers.0.self_attn.q_proj"
    name1 = "model.layers.1.self_attn.q_proj"
    torch.testing.assert_close(seen[name0].sum_sq, dense[name0].sum_sq)
    torch.testing.assert_close(seen[name1].sum_sq, after[name1].sum_sq, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(seen[name1].sum_sq, dense[name1].sum_sq, rtol=1e-2)


def test_statistics_accumulate_in_float32():
    stats = InputStatistics(3, torch.device("cpu"))
    stats.update(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.bfloat16))
    stats.update(torch.tensor([[3.0, 2.0, 1.0]], dtype=torch.bfloat16))
    assert stats.sum_sq.dtype == torch.float32 and stats.count == 2
    torch.testing.assert_close(stats.mean_sq, torch.tensor([5.0, 4.0, 5.0]))
    torch.testing.assert_close(stats.variance, torch.tensor([1.0, 0.0, 1.0]))


def test_layers_reading_one_input_share_one_gram(tiny_llama, calibration):
    layers = get_adapter(tiny_llama).prunable_layers(tiny_llama)
    statistics = collect_input_statistics(tiny_llama, calibration, layers=layers, with_gram=True)
    block = "model.layers.1."
    q, k, v = (statistics[block + f"self_attn.{p}_proj"] for p in "qkv")
    gate, up = statistics[block + "mlp.gate_proj"], statistics[block + "mlp.up_proj"]
    assert q is k is v and gate is up and q is not gate and statistics[block + "mlp.down_proj"] is not gate
    assert len({id(s) for s in statistics.values()}) == 4 * len(get_adapter(tiny_llama).blocks(tiny_llama))
    alone = [layer for layer in layers if layer.name == block + "self_attn.v_proj"]
    single = collect_input_statistics(tiny_llama, calibration, with_gram=True, layers=alone)
    torch.testing.assert_close(single[block + "self_attn.v_proj"].gram, v.gram)
