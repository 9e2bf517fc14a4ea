"""Weight reconstruction for any mask: after a mask is chosen (a metric, N:M, a searched
allocation), update the kept weights so the layer's outputs on calibration inputs are restored.

* ``"obs"`` – SparseGPT's column-wise OBS update with the mask fixed (:func:`obs_update_`).
* ``"lstsq"`` – per-row least squares: each row's kept weights minimise ‖(W − W′)X‖ with the
  pruned ones held at zero, solved for all rows at once by Jacobi-preconditioned conjugate
  gradients on ``H = 2XXᵀ/n + λI`` (matrix products only; exact when run to convergence).
* ``"none"`` – masking only.

Both need the layer's input Gram ``X Xᵀ``; one :class:`~.sparsegpt.HessianFactor` per input
serves every layer reading it (q/k/v, gate/up).
"""

from __future__ import annotations

import torch

from ..errors import SettingError, param
from .sparsegpt import HessianFactor, obs_update_

UPDATES = ("none", "obs", "lstsq")


def check_update(update: str) -> str:
    if update not in UPDATES:
        raise SettingError(f"{param('update')} {update!r} is not a weight update: use one of "
                           f"{', '.join(UPDATES)}")
    return update


@torch.no_grad()
def lstsq_update_(weight: torch.Tensor, mask: torch.Tensor, gram: torch.Tensor | None = None,
                  n_tokens: int = 0, damping: float = 0.01, factor: HessianFactor | None = None,
                  iterations: int = 50, tolerance: float = 1e-6) -> torch.Tensor:
    """Zero ``weight`` (``(out, in)``) outside ``mask`` and set its kept weights to the per-row
    least-squares reconstruction, **in place**. Returns ``mask``."""
    if mask.shape != weight.shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} for a weight of shape {tuple(weight.shape)}")
    hessian = (factor.hessian if factor is not None
               else gram.to(weight.device, torch.float32) * (2.0 / max(n_tokens, 1))).to(weight.device)
    hessian = hessian + damping * hessian.diagonal().mean() * torch.eye(len(hessian), device=hessian.device)
    keep = mask.to(weight.device, torch.bool)
    w = weight.float()
    # kept-block normal equations per row: H_KK d_K = (H (w ⊙ pruned))_K, then w'_K = w_K + d_K
    rhs = ((w * ~keep) @ hessian) * keep
    inverse_diagonal = 1.0 / hessian.diagonal().clamp_min(1e-12)
    delta = torch.zeros_like(w)
    residual = rhs.clone()
    z = residual * inverse_diagonal
    direction = z.clone()
    rz = (residual * z).sum(1)
    scale = rhs.norm(dim=1).clamp_min(1e-30)
    for _ in range(iterations):
        if (residual.norm(dim=1) / scale).max() < tolerance:
            break
        product = (direction @ hessian) * keep
        alpha = rz / (direction * product).sum(1).clamp_min(1e-30)
        delta += alpha[:, None] * direction
        residual -= alpha[:, None] * product
        z = residual * inverse_diagonal
        rz_next = (residual * z).sum(1)
        direction = z + (rz_next / rz.clamp_min(1e-30))[:, None] * direction
        rz = rz_next
    weight.copy_(((w + delta) * keep).to(weight.dtype))
    return keep


def reconstruct_(weight: torch.Tensor, mask: torch.Tensor, update: str, gram: torch.Tensor | None = None,
                 n_tokens: int = 0, factor: HessianFactor | None = None) -> torch.Tensor:
    """Prune ``weight`` to ``mask`` **in place** and apply ``update`` (see the module docstring)."""
    check_update(update)
    if update == "obs":
        return obs_update_(weight, mask, gram, n_tokens, factor=factor)
    if update == "lstsq":
        return lstsq_update_(weight, mask, gram, n_tokens, factor=factor)
    weight.masked_fill_(~mask.to(weight.device, torch.bool), 0)
    return mask
