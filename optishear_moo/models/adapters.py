"""Architecture adapters: where the decoder blocks and their prunable linear layers live.

All architecture dispatch is kept in this module. An adapter knows the attribute path of a
model family's decoder blocks; the prunable layers of a block are its ``nn.Linear`` and
GPT-2-style ``Conv1D`` modules. Every weight is exposed in ``(out_features, in_features)``
orientation (a transposed *view* for ``Conv1D``), so metrics, masks and SparseGPT never
need to know which family they are working on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class PrunableLayer:
    """One prunable linear layer of a decoder block.

    ``name`` is the module's full dotted name in the model (``model.layers.3.mlp.up_proj``),
    ``role`` its name inside the block (``mlp.up_proj``).
    """

    name: str
    block_index: int
    role: str
    module: nn.Module

    @property
    def transposed(self) -> bool:
        return isinstance(self.module, Conv1D)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as a ``(out_features, in_features)`` tensor sharing storage with the module."""
        w = self.module.weight.data
        return w.t() if self.transposed else w

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def numel(self) -> int:
        return self.weight.numel()


@dataclass(frozen=True)
class ArchitectureAdapter:
    """How to find the decoder blocks of one model family.

    ``blocks_path`` is the dotted attribute path from the ``*ForCausalLM`` model to the
    ``nn.ModuleList`` of decoder blocks.
    """

    family: str
    model_types: tuple[str, ...]
    blocks_path: str
    final_paths: tuple[str, ...] = ()
    """Modules between the last block and the LM head, in order (final norm, projections);
    a path that is missing or ``None`` on a given model is skipped."""

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        return _attribute(model, self.blocks_path)

    def set_blocks(self, model: nn.Module, blocks: nn.ModuleList) -> None:
        parent, _, name = self.blocks_path.rpartition(".")
        setattr(_attribute(model, parent) if parent else model, name, blocks)

    def final_modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules between the last block and the LM head that this model has, in order."""
        modules = [_attribute(model, path, missing_ok=True) for path in self.final_paths]
        return [module for module in modules if module is not None]

    def head_inputs(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head's inputs from the last block's output ``hidden`` (``(batch, seq, hidden)``)."""
        for module in self.final_modules(model):
            hidden = module(hidden)
        return hidden

    @staticmethod
    def logits(model: nn.Module, head_inputs: torch.Tensor) -> torch.Tensor:
        """float32 next-token logits from LM-head inputs, with the final soft-capping some families
        (Gemma 2) apply after the head."""
        return ArchitectureAdapter.soft_capped(model, model.get_output_embeddings()(head_inputs).float())

    @staticmethod
    def soft_capped(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (or a vocabulary slice of them) after the final soft-capping, where the family
        has one."""
        cap = getattr(model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def prunable_layers(self, model: nn.Module) -> list[PrunableLayer]:
        """All prunable linear layers, block by block, in module order."""
        layers = []
        for index, block in enumerate(self.blocks(model)):
            layers.extend(self.block_layers(block, index))
        return layers

    def block_layers(self, block: nn.Module, index: int) -> list[PrunableLayer]:
        prefix = f"{self.blocks_path}.{index}"
        return [
            PrunableLayer(f"{prefix}.{role}", index, role, module)
            for role, module in block.named_modules()
            if isinstance(module, (nn.Linear, Conv1D))
        ]


def _attribute(obj, path: str, missing_ok: bool = False):
    for attribute in path.split("."):
        obj = getattr(obj, attribute, None) if missing_ok else getattr(obj, attribute)
    return obj


_ADAPTERS: dict[str, ArchitectureAdapter] = {}


def register_adapter(adapter: ArchitectureAdapter) -> None:
    """Make a model family prunable: map each of its ``config.model_type`` values to ``adapter``."""
    for model_type in adapter.model_types:
        _ADAPTERS[model_type] = adapter


for _adapter in (
    ArchitectureAdapter("llama", ("llama", "mistral", "qwen2", "qwen3", "gemma3_text"), "model.layers",
                        ("model.norm",)),
    ArchitectureAdapter("gpt2", ("gpt2",), "transformer.h", ("transformer.ln_f",)),
    ArchitectureAdapter("opt", ("opt",), "model.decoder.layers",
                        ("model.decoder.final_layer_norm", "model.decoder.project_out")),
):
    register_adapter(_adapter)


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model``; a ``ValueError`` listing what is supported otherwise."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    adapter = _ADAPTERS.get(model_type)
    if adapter is None:
        raise ValueError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}): supported model "
            f"types are {', '.join(supported_model_types())}; register another family with "
            "optishear_moo.models.register_adapter(ArchitectureAdapter(...))"
        )
    try:
        adapter.blocks(model)
    except AttributeError as error:
        raise ValueError(
            f"{type(model).__name__} has model_type {model_type!r} but no decoder blocks at "
            f"'{adapter.blocks_path}'; pass a *ForCausalLM model"
        ) from error
    return adapter
