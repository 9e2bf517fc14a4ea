"""Whole-block removal: really dropping decoder blocks, and the heuristic choices of which.

``remove_blocks_`` shortens the block list in place and keeps the config and the per-layer
indices consistent, so the model saves with ``save_pretrained``, reloads with
``AutoModelForCausalLM.from_pretrained`` as an ordinary shallower model, and runs faster.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from ..activations import walk_blocks
from ..errors import SettingError, param
from ..models.adapters import get_adapter

# per-layer lists some configs carry (their length must follow num_hidden_layers)
_PER_LAYER_CONFIG_LISTS = ("layer_types",)


def check_removed_blocks(removed: Iterable[int], n_blocks: int) -> list[int]:
    """Sorted distinct block indices; a ``ValueError`` for out-of-range, repeated or all blocks."""
    removed = [int(i) for i in removed]
    if len(set(removed)) != len(removed):
        raise ValueError(f"block indices repeat: {removed}")
    bad = [i for i in removed if not 0 <= i < n_blocks]
    if bad:
        raise ValueError(f"block indices {bad} are outside 0..{n_blocks - 1}")
    if len(removed) >= n_blocks:
        raise ValueError(f"cannot remove all {n_blocks} blocks: keep at least one")
    return sorted(removed)


def check_n_remove(n_remove: int, n_blocks: int) -> int:
    integer = isinstance(n_remove, (int, np.integer)) and not isinstance(n_remove, bool)
    if not integer or not 0 <= n_remove < n_blocks:
        raise SettingError(f"{param('n_remove')} must be an integer in [0, {n_blocks}), got {n_remove!r}")
    return int(n_remove)


def remove_blocks_(model: nn.Module, removed: Iterable[int]) -> nn.Module:
    """Drop the decoder blocks at indices ``removed`` **in place**; returns ``model``.

    Updates ``config.num_hidden_layers`` (and per-layer config lists such as ``layer_types``),
    renumbers every ``layer_idx`` so KV-cache slots stay contiguous, and records the original
    indices of everything removed so far in ``config.removed_blocks``.
    """
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    removed = check_removed_blocks(removed, len(blocks))
    kept = [i for i in range(len(blocks)) if i not in set(removed)]
    adapter.set_blocks(model, nn.ModuleList([blocks[i] for i in kept]))
    for new_index, block in enumerate(adapter.blocks(model)):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = model.config
    for name in _PER_LAYER_CONFIG_LISTS:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == len(blocks):
            setattr(config, name, [values[i] for i in kept])
    original = _original_indices(config, len(blocks))
    config.removed_blocks = sorted(set(getattr(config, "removed_blocks", None) or [])
                                   | {original[i] for i in removed})
    config.num_hidden_layers = len(kept)
    return model


def _original_indices(config, n_blocks: int) -> list[int]:
    """Index in the unpruned model of each current block."""
    earlier = set(getattr(config, "removed_blocks", None) or [])
    return [i for i in range(n_blocks + len(earlier)) if i not in earlier]


def last_blocks(n_blocks: int, n_remove: int) -> list[int]:
    """The ``n_remove`` deepest blocks *before the final one* (the final block is kept: removing
    it hurts far more than the blocks just before it)."""
    n_remove = check_n_remove(n_remove, n_blocks)
    return list(range(n_blocks - 1 - n_remove, n_blocks - 1))


def influence_between(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """Mean over tokens of 1 - cos(input, output) for one block's per-batch hidden states."""
    total = sum(float((1 - torch.cosine_similarity(h.float(), o.float(), dim=-1)).sum())
                for h, o in zip(inputs, outputs))
    return total / sum(h[..., 0].numel() for h in inputs)


@torch.no_grad()
def block_influence(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """ShortGPT's block influence per block: mean over tokens of 1 - cos(block input, block output).

    Returns ``(n_blocks,)`` float64; blocks that change their input least score lowest.
    """
    return np.array([influence_between(turn.hidden, turn.run())
                     for turn in walk_blocks(model, calibration, batch_size, changes=False)])


def least_influential(influence, n_remove: int) -> list[int]:
    """The ``n_remove`` blocks of lowest influence (ShortGPT's choice), sorted."""
    n_remove = check_n_remove(n_remove, len(influence))
    return sorted(np.argsort(influence, kind="stable")[:n_remove].tolist())


def shortgpt_blocks(model: nn.Module, calibration: torch.Tensor, n_remove: int,
                    batch_size: int = 8) -> list[int]:
    """The ``n_remove`` blocks of lowest :func:`block_influence` (ShortGPT)."""
    return least_influential(block_influence(model, calibration, batch_size), n_remove)
