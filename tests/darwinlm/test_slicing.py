import pytest
import torch

from optishear_moo.darwinlm.database import (
    StructuredLevelDatabase,
    kept_parameters,
)
from optishear_moo.darwinlm.slicing import apply_levels_
from optishear_moo.models import get_adapter, load_model
from optishear_moo.models.sliced import SkippedAttention, SkippedMLP
from tests.conftest import make_tiny_model, tiny_config


def masked_copy(database, levels, model=None):
    """The dense ``model`` (default: the tiny Llama) with removed columns of o_proj/down_proj
    zeroed and the kept ones set to the database's re-fitted weights: numerically what slicing
    must reproduce."""
    model = model if model is not None else make_tiny_model("llama")
    for index, block in enumerate(get_adapter(model).blocks(model)):
        for unit, layer, level in (("attention", block.self_attn.o_proj, levels[index][0]),
                                   ("mlp", block.mlp.down_proj, levels[index][1])):
            entry = database.get(index, unit, level)
            full = torch.zeros_like(layer.weight)
            full[:, entry.kept] = entry.weight
            layer.weight.copy_(full)
    return model


@pytest.mark.parametrize("levels", [[[1, 3], [0, 8], [2, 1]], [[0, 0], [2, 0], [1, 5]]])
def test_sliced_model_equals_masked_model_and_really_shrinks(levels, calibration, tmp_path, tiny_tokenizer):
    model = make_tiny_model("llama")
    database = StructuredLevelDatabase.build(model, calibration, mlp_levels=8, directory=tmp_path / "db")
    assert len(list((tmp_path / "db").glob("*.safetensors"))) == 6
    expected = masked_copy(database, levels)(calibration).logits
    dense_size = sum(p.numel() for p in model.parameters())
    apply_levels_(model, database, levels)
    torch.testing.assert_close(model(calibration).logits, expected, rtol=1e-4, atol=1e-5)
    removed = dense_size - sum(p.numel() for p in model.parameters())
    assert removed == database.unit_parameters("attention") * 3 + database.unit_parameters("mlp") * 3 \
        - kept_parameters(database, levels) + 0
    blocks = get_adapter(model).blocks(model)
    for (a, m), block, sizes in zip(levels, blocks, model.config.structured_layers):
        skipped = sizes["num_key_value_heads"] == 0
        assert isinstance(block.self_attn, SkippedAttention) == (a == 2) == skipped
        assert isinstance(block.mlp, SkippedMLP) == (m == 8) == (sizes["intermediate_size"] == 0)
        if a < 2:  # GQA stays valid: q heads = 2 per kv head
            assert block.self_attn.q_proj.out_features == 2 * block.self_attn.k_proj.out_features
            assert sizes["num_attention_heads"] == 2 * sizes["num_key_value_heads"]
    model.save_pretrained(tmp_path / "saved")
    tiny_tokenizer.save_pretrained(tmp_path / "saved")
    reloaded, _ = load_model(str(tmp_path / "saved"))
    torch.testing.assert_close(reloaded(calibration).logits, model(calibration).logits)
    cached = reloaded.generate(calibration[:1, :6], max_new_tokens=4, do_sample=False)
    assert cached.shape == (1, 10)


def test_qwen2_biases_follow_the_kept_heads(calibration):
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("qwen2")).eval().requires_grad_(False)
    for p in model.parameters():
        if p.ndim == 1:
            p.normal_()
    database = StructuredLevelDatabase.build(model, calibration, mlp_levels=4)
    levels = [[1, 1], [0, 2]]
    reference = AutoModelForCausalLM.from_config(tiny_config("qwen2")).eval().requires_grad_(False)
    reference.load_state_dict(model.state_dict())
    masked_copy(database, levels, reference)
    apply_levels_(model, database, levels)
    torch.testing.assert_close(model(calibration).logits, reference(calibration).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma3_text", "qwen3", "mistral"])
def test_other_families_slice_like_their_masked_model_and_reload(family, calibration, tmp_path,
                                                                  tiny_tokenizer):
    model = make_tiny_model(family)
    database = StructuredLevelDatabase.build(model, calibration, mlp_levels=4)
    n_blocks = len(get_adapter(model).blocks(model))
    levels = [[index % 3, (index + 1) % 5] for index in range(n_blocks)]
    expected = masked_copy(database, levels, make_tiny_model(family))(calibration).logits
    apply_levels_(model, database, levels)
    torch.testing.assert_close(model(calibration).logits, expected, rtol=1e-4, atol=1e-5)
    model.save_pretrained(tmp_path / family)
    tiny_tokenizer.save_pretrained(tmp_path / family)
    reloaded, _ = load_model(str(tmp_path / family))
    torch.testing.assert_close(reloaded(calibration).logits, model(calibration).logits)


def test_database_bytes_count_the_entries_in_memory_and_the_files_on_disk(calibration, tmp_path):
    model = make_tiny_model("llama")
    in_memory = StructuredLevelDatabase.build(model, calibration, mlp_levels=8)
    on_disk = StructuredLevelDatabase.build(model, calibration, mlp_levels=8, directory=tmp_path / "db")
    entries = [in_memory.get(block, unit, level) for block in range(in_memory.n_blocks)
               for unit, top in in_memory.n_levels.items() for level in range(top + 1)]
    expected = sum(entry.kept.nbytes + entry.weight.nbytes for entry in entries)
    assert in_memory.nbytes == expected > 0
    assert on_disk.nbytes == sum(path.stat().st_size for path in (tmp_path / "db").iterdir())
    assert expected < on_disk.nbytes < expected + 6 * 4096  # the same tensors plus six file headers
