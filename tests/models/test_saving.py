"""A pruned model saved the way it will be used: its own precision, and what it holds."""

import json

import torch
from transformers import AutoModelForCausalLM

from optishear_moo.models import load_model, save_model
from optishear_moo.pruning import prune_model


def test_saved_in_its_own_precision_or_another_with_a_description(tiny_model_dir, calibration, tmp_path):
    model, tokenizer = load_model(str(tiny_model_dir))
    prune_model(model, calibration, method="wanda", sparsity=0.5, progress=False)
    ids = calibration[:2]
    save_model(model, tokenizer, tmp_path / "auto", description={"method": "wanda", "sparsity": 0.5})
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert config["pruning"] == {"method": "wanda", "sparsity": 0.5} and config["dtype"] == "float32"
    float32 = (tmp_path / "auto" / "model.safetensors").stat().st_size
    save_model(model, tokenizer, tmp_path / "bf16", "bfloat16")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").eval()
    assert reloaded.dtype == model.dtype == torch.bfloat16
    with torch.no_grad():  # the same logits as the model in memory
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert (tmp_path / "bf16" / "model.safetensors").stat().st_size < 0.55 * float32  # half the size
    zeros = [(p == 0).float().mean() for n, p in reloaded.named_parameters() if "layers" in n and "proj" in n]
    assert min(zeros) >= 0.5  # the pruned zeros stay zeros


def test_a_quantized_checkpoint_is_saved_in_bfloat16_by_default(tiny_llama, tiny_tokenizer, tmp_path):
    tiny_llama.source_dtype = None  # what load_model records for a GGUF
    save_model(tiny_llama, tiny_tokenizer, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
