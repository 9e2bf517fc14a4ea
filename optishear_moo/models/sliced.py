"""Non-uniform (structurally pruned) Llama-family models: their modules, config and loading.

A structurally pruned model keeps the ordinary transformers classes; only the sizes of each
block's projections differ. ``config.structured_layers`` records, per block,
``num_key_value_heads``, ``num_attention_heads`` and ``intermediate_size`` (0 = that sub-block
is skipped), so :func:`load_sliced_model` (called by ``load_model`` for such a directory) can
rebuild the shapes before loading the saved weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .adapters import get_adapter


class SkippedAttention(nn.Module):
    """Stands in for an attention sub-block whose every head was removed: adds nothing."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class SkippedMLP(nn.Module):
    """Stands in for an MLP whose every channel was removed: adds nothing."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states)


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` (``(out, in)``) and ``bias``, gradients off."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                      device=weight.device, dtype=weight.dtype)
    layer.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().contiguous(), requires_grad=False)
    return layer


def structured_layers_config(kv_heads, intermediate_sizes, heads_per_group: int) -> list[dict]:
    return [{"num_key_value_heads": int(k), "num_attention_heads": int(k) * heads_per_group,
             "intermediate_size": int(m)} for k, m in zip(kv_heads, intermediate_sizes)]


def _first_rows(layer: nn.Linear, n: int) -> nn.Linear:
    return new_linear(layer.weight[:n], None if layer.bias is None else layer.bias[:n])


def resize_block_(block: nn.Module, sizes: dict, head_dim: int) -> None:
    """Give ``block`` the shapes in ``sizes`` (one entry of ``config.structured_layers``); the
    values are placeholders until weights are loaded."""
    attention, mlp = block.self_attn, block.mlp
    if sizes["num_key_value_heads"] == 0:
        block.self_attn = SkippedAttention()
    else:
        q, kv = sizes["num_attention_heads"] * head_dim, sizes["num_key_value_heads"] * head_dim
        attention.q_proj = _first_rows(attention.q_proj, q)
        attention.k_proj = _first_rows(attention.k_proj, kv)
        attention.v_proj = _first_rows(attention.v_proj, kv)
        o = attention.o_proj
        attention.o_proj = new_linear(o.weight[:, :q], o.bias)
    if sizes["intermediate_size"] == 0:
        block.mlp = SkippedMLP()
    else:
        m = sizes["intermediate_size"]
        mlp.gate_proj, mlp.up_proj = _first_rows(mlp.gate_proj, m), _first_rows(mlp.up_proj, m)
        mlp.down_proj = new_linear(mlp.down_proj.weight[:, :m], mlp.down_proj.bias)


def _state_dict_files(directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{directory} holds no *.safetensors weights: save the model with save_pretrained")
    return files


def load_sliced_model(directory: str | Path, dtype: torch.dtype = torch.float32):
    """Rebuild a structurally pruned model saved with ``save_pretrained`` (weights included)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    layers = getattr(config, "structured_layers", None)
    if not layers or len(layers) != config.num_hidden_layers:
        raise ValueError(f"{directory} is not a structurally pruned model (config.structured_layers "
                         "missing or of the wrong length)")
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # placeholder values, replaced below
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for block, sizes in zip(get_adapter(model).blocks(model), layers):
        resize_block_(block, sizes, head_dim)
    state = {}
    for file in _state_dict_files(directory):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"weights in {directory} do not fit its structured_layers: missing "
                         f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    if tied:
        model.tie_weights()
    return model.eval().requires_grad_(False)
