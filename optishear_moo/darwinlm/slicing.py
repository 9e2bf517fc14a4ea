"""Physically slicing a model's blocks to the levels of a :class:`StructuredLevelDatabase`."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..activations import on_device
from ..models import streaming
from ..models.adapters import get_adapter
from ..models.sliced import (
    UNITS,
    dense_input_projections,
    is_skipped,
    set_unit,
    skipped,
    slice_unit_,
    structured_layers_config,
    unit_of,
)
from .database import StructuredLevelDatabase, check_levels


def dense_units(model: nn.Module) -> list[tuple[nn.Module, ...]]:
    """Each block's ``(attention, mlp)`` modules, to keep for re-slicing (``originals``)."""
    return [tuple(unit_of(block, unit) for unit in UNITS) for block in get_adapter(model).blocks(model)]


def apply_levels_(model: nn.Module, database: StructuredLevelDatabase, levels, blocks=None,
                  originals: list[tuple[nn.Module, ...]] | None = None) -> nn.Module:
    """Physically slice ``model``'s blocks to ``levels`` **in place**; returns ``model``.

    ``blocks`` limits the work to those block indices (the others must already be right);
    ``originals`` (:func:`dense_units` of the dense model) holds each block's dense
    ``(attention, mlp)`` modules so a model can be re-sliced many times (the search does);
    without it, slice a dense model once. Sets ``config.structured_layers`` so the result saves
    and reloads with ``load_model``.

    A block streamed from disk (``load_model(..., offload="disk")``) is read into host memory,
    sliced there and kept there: the sliced model ends in host memory at its pruned size, its
    embeddings still streamed.
    """
    levels = check_levels(levels, database)
    layout, tops = database.layout, database.n_levels
    model_blocks = get_adapter(model).blocks(model)
    for index in range(database.n_blocks) if blocks is None else blocks:
        block = model_blocks[index]
        modules = originals[index] if originals else tuple(unit_of(block, unit) for unit in UNITS)
        if any(is_skipped(module) for module in modules):
            raise ValueError("this model is already sliced: apply levels to a dense model")
        if database.dense is None and originals:
            raise ValueError("a database of a model streamed from disk slices the model once: apply "
                             "levels without originals")
        cpu = torch.device("cpu")
        streamed = streaming.record(block) is not None
        with on_device(block, cpu, cpu, keep=True) if streamed else contextlib.nullcontext():
            dense = database.dense[index] if database.dense is not None else dense_input_projections(block)
            for column, (unit, module) in enumerate(zip(UNITS, modules)):
                level = int(levels[index, column])
                if level == tops[unit]:
                    set_unit(block, unit, skipped(unit))
                    continue
                entry = database.get(index, unit, level)
                slice_unit_(module, unit, dense, entry.kept, entry.weight, layout)
                set_unit(block, unit, module)
    kv = [layout.n_kv_heads - database.removed_count("attention", a) for a in levels[:, 0].tolist()]
    inter = [layout.intermediate_size - database.removed_count("mlp", m) for m in levels[:, 1].tolist()]
    model.config.structured_layers = structured_layers_config(kv, inter, layout.heads_per_group)
    return model
