"""Structured (head / channel) pruning of Llama-family blocks: where the attention and MLP units
live, the names of their projections, slicing them, and reloading non-uniform models.

All architecture names that structured pruning needs (``self_attn``, ``mlp``, ``q_proj``...
``down_proj``, config fields of the head layout) are kept in this module.

A structurally pruned model keeps the ordinary transformers classes; only the sizes of each
block's projections differ. ``config.structured_layers`` records, per block,
``num_key_value_heads``, ``num_attention_heads`` and ``intermediate_size`` (0 = that sub-block
is skipped), so :func:`load_sliced_model` (called by ``load_model`` for such a directory) can
rebuild the shapes before loading the saved weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .adapters import get_adapter

UNITS = ("attention", "mlp")
STRUCTURED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
_UNIT_ATTRIBUTES = {"attention": "self_attn", "mlp": "mlp"}
_OUTPUT_PROJECTIONS = {"attention": "o_proj", "mlp": "down_proj"}


@dataclass(frozen=True)
class BlockLayout:
    """Sizes of one block: ``n_kv_heads`` groups of ``heads_per_group`` query heads of
    ``head_dim``; ``intermediate_size`` MLP channels; ``hidden_size`` the residual width."""

    hidden_size: int
    n_kv_heads: int
    heads_per_group: int
    head_dim: int
    intermediate_size: int


class SkippedAttention(nn.Module):
    """Stands in for an attention sub-block whose every head was removed: adds nothing."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states), None


class SkippedMLP(nn.Module):
    """Stands in for an MLP whose every channel was removed: adds nothing."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states)


def check_structured_model(model_or_config) -> None:
    """A ``ValueError`` unless the model (or its config) is a family structured pruning supports."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in STRUCTURED_MODEL_TYPES:
        raise ValueError(f"structured pruning supports model types {', '.join(STRUCTURED_MODEL_TYPES)} "
                         f"(attention with q/k/v/o_proj and a gated MLP); got {model_type!r}")


def block_layout(model_or_config) -> BlockLayout:
    """The dense layout every block of a model (or of its config) starts from."""
    check_structured_model(model_or_config)
    config = getattr(model_or_config, "config", model_or_config)
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return BlockLayout(config.hidden_size, n_kv, n_heads // n_kv, head_dim, config.intermediate_size)


def unit_of(block: nn.Module, unit: str) -> nn.Module:
    """The ``"attention"`` or ``"mlp"`` sub-module of a decoder block."""
    return getattr(block, _UNIT_ATTRIBUTES[unit])


def set_unit(block: nn.Module, unit: str, module: nn.Module) -> None:
    setattr(block, _UNIT_ATTRIBUTES[unit], module)


def is_skipped(module: nn.Module) -> bool:
    return isinstance(module, (SkippedAttention, SkippedMLP))


def skipped(unit: str) -> nn.Module:
    return SkippedAttention() if unit == "attention" else SkippedMLP()


def output_projection(module: nn.Module, unit: str) -> nn.Linear:
    """``o_proj`` of an attention unit, ``down_proj`` of an MLP unit."""
    return getattr(module, _OUTPUT_PROJECTIONS[unit])


def output_projection_role(unit: str) -> str:
    """The role (name inside the block) of a unit's output projection, as in ``PrunableLayer.role``."""
    return f"{_UNIT_ATTRIBUTES[unit]}.{_OUTPUT_PROJECTIONS[unit]}"


def dense_input_projections(block: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the weights (and biases) of the projections that feed each unit:
    ``q``, ``k``, ``v``, ``gate``, ``up`` (``q_bias``... where present). Slicing starts from them."""
    attention, mlp = unit_of(block, "attention"), unit_of(block, "mlp")
    modules = {"q": attention.q_proj, "k": attention.k_proj, "v": attention.v_proj,
               "gate": mlp.gate_proj, "up": mlp.up_proj}
    dense = {name: module.weight.detach().clone() for name, module in modules.items()}
    dense.update({f"{name}_bias": module.bias.detach().clone() for name, module in modules.items()
                  if module.bias is not None})
    return dense


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` (``(out, in)``) and ``bias``, gradients off."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                      device=weight.device, dtype=weight.dtype)
    layer.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().contiguous(), requires_grad=False)
    return layer


def _expand(groups: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of ``groups`` of ``width`` consecutive rows each."""
    return (groups[:, None] * width + torch.arange(width, device=groups.device)).flatten()


def _bias(dense: dict, name: str, rows: torch.Tensor):
    bias = dense.get(f"{name}_bias")
    return None if bias is None else bias[rows]


def _bias_of(layer):
    bias = getattr(layer, "bias", None)
    return None if bias is None else bias.detach()


def slice_attention_(attention: nn.Module, dense: dict, kept_columns: torch.Tensor,
                     output_weight: torch.Tensor, layout: BlockLayout) -> None:
    """Give ``attention`` (in place) the head groups whose ``o_proj`` input columns are
    ``kept_columns`` (dense numbering), ``o_proj`` weight ``output_weight`` (``(hidden, n_kept)``)
    and the matching rows of the dense ``q``/``k``/``v`` projections in ``dense``."""
    group_width = layout.heads_per_group * layout.head_dim
    device = dense["q"].device
    groups = (kept_columns[::group_width] // group_width).to(device)
    q_rows, kv_rows = _expand(groups, group_width), _expand(groups, layout.head_dim)
    attention.q_proj = new_linear(dense["q"][q_rows], _bias(dense, "q", q_rows))
    attention.k_proj = new_linear(dense["k"][kv_rows], _bias(dense, "k", kv_rows))
    attention.v_proj = new_linear(dense["v"][kv_rows], _bias(dense, "v", kv_rows))
    attention.o_proj = new_linear(output_weight.to(device, copy=True), _bias_of(attention.o_proj))


def slice_mlp_(mlp: nn.Module, dense: dict, kept_columns: torch.Tensor,
               output_weight: torch.Tensor) -> None:
    """Give ``mlp`` (in place) the channels ``kept_columns`` of ``down_proj``'s input, its weight
    ``output_weight`` and the matching rows of the dense ``gate``/``up`` projections."""
    device = dense["gate"].device
    rows = kept_columns.to(device)
    mlp.gate_proj = new_linear(dense["gate"][rows], _bias(dense, "gate", rows))
    mlp.up_proj = new_linear(dense["up"][rows], _bias(dense, "up", rows))
    mlp.down_proj = new_linear(output_weight.to(device, copy=True), _bias_of(mlp.down_proj))


def slice_unit_(module: nn.Module, unit: str, dense: dict, kept_columns: torch.Tensor,
                output_weight: torch.Tensor, layout: BlockLayout) -> None:
    if unit == "attention":
        slice_attention_(module, dense, kept_columns, output_weight, layout)
    else:
        slice_mlp_(module, dense, kept_columns, output_weight)


def structured_layers_config(kv_heads, intermediate_sizes, heads_per_group: int) -> list[dict]:
    return [{"num_key_value_heads": int(k), "num_attention_heads": int(k) * heads_per_group,
             "intermediate_size": int(m)} for k, m in zip(kv_heads, intermediate_sizes)]


def _first_rows(layer: nn.Linear, n: int) -> nn.Linear:
    return new_linear(layer.weight[:n], None if layer.bias is None else layer.bias[:n])


def resize_block_(block: nn.Module, sizes: dict, head_dim: int) -> None:
    """Give ``block`` the shapes in ``sizes`` (one entry of ``config.structured_layers``); the
    values are placeholders until weights are loaded."""
    attention, mlp = unit_of(block, "attention"), unit_of(block, "mlp")
    if sizes["num_key_value_heads"] == 0:
        set_unit(block, "attention", SkippedAttention())
    else:
        q, kv = sizes["num_attention_heads"] * head_dim, sizes["num_key_value_heads"] * head_dim
        attention.q_proj = _first_rows(attention.q_proj, q)
        attention.k_proj = _first_rows(attention.k_proj, kv)
        attention.v_proj = _first_rows(attention.v_proj, kv)
        o = attention.o_proj
        attention.o_proj = new_linear(o.weight[:, :q], o.bias)
    if sizes["intermediate_size"] == 0:
        set_unit(block, "mlp", SkippedMLP())
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
