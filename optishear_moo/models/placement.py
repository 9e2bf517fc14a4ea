"""Where a model's weights live and where its blocks run.

A model loaded with ``load_model(..., device="cuda", offload=True)`` keeps its weights in host
memory and names a *compute device*: every block-by-block path of the package – the population
walk that scores candidates, the dense references, pruning with a fixed recipe, the level
databases – brings one block at a time there and sends it back, so a model larger than the
device can be searched and pruned on it. ``offload="disk"`` goes further: the blocks and
embeddings stay in the checkpoint's files and are read one at a time
(:mod:`optishear_moo.models.streaming`). Every other model computes where its weights are.
"""

from __future__ import annotations

import torch
from torch import nn

from .streaming import is_streamed

_ATTRIBUTE = "optishear_compute_device"


def weights_device(model: nn.Module) -> torch.device:
    """The device of the model's (first) parameters; host memory for a model streamed from disk
    (:mod:`optishear_moo.models.streaming`), where its modules are read when called outside a walk."""
    if is_streamed(model):
        return torch.device("cpu")
    return next(model.parameters()).device


def compute_device(model: nn.Module) -> torch.device:
    """Where the model's blocks run: the device named by :func:`offload`, else its weights' device."""
    device = getattr(model, _ATTRIBUTE, None)
    return torch.device(device) if device is not None else weights_device(model)


def offload(model: nn.Module, device: str | torch.device) -> nn.Module:
    """Keep ``model``'s weights where they are and run its blocks on ``device``, one at a time."""
    setattr(model, _ATTRIBUTE, str(torch.device(device)))
    return model


def is_offloaded(model: nn.Module) -> bool:
    """Whether the model's blocks run away from where its weights live: on another device, or
    read from disk."""
    return compute_device(model) != weights_device(model) or is_streamed(model)
