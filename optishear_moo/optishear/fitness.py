"""Fitness of a pruning candidate: how far the pruned model is from the dense one.

Everything dense is computed once (:class:`DenseReference`). The problem scores a population's
forward objectives in one walk over the blocks
(:class:`~optishear_moo.evaluation.population.BlockwiseEvaluator`); :class:`FitnessEvaluator`
judges one candidate at a time by pruning one working model **in place**, measuring, and
restoring its dense weights (the objectives without a forward, and a reference for tests and
benchmarks).

Objectives (all minimised, all zero for the dense model):

* ``kl`` – mean over calibration tokens of KL(dense ‖ pruned) of the next-token distributions
  (OptiShear v2's global divergence).
* ``output_error`` – ‖H_pruned − H_dense‖_F / ‖H_dense‖_F on the final hidden states (the
  inputs of the LM head): the end-to-end reconstruction error.
* ``reconstruction`` – mean over prunable layers of ‖(W − M⊙W) X‖_F / ‖W X‖_F, with X the
  layer's dense inputs on a fixed subsample of calibration tokens (OptiShear v1's model-wise
  reconstruction error, normalised per layer). Needs no forward pass.
* ``density`` – share of prunable weights kept (1 − achieved sparsity): the size objective.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..activations import InputStatistics, final_hidden, model_device, recording_inputs
from ..errors import SettingError, param
from ..evaluation.divergence import DenseOutputs, compared_batches, distance_to_dense
from ..models.adapters import PrunableLayer, get_adapter
from ..pruning.prune import shared_factors
from ..pruning.update import reconstruct_
from ..pruning.weights import DenseSnapshot, apply_masks_

OBJECTIVES = ("kl", "output_error", "reconstruction", "density")
FORWARD_OBJECTIVES = {"kl", "output_error"}


def check_objectives(objectives) -> tuple[str, ...]:
    objectives = (objectives,) if isinstance(objectives, str) else tuple(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown or not objectives or len(set(objectives)) != len(objectives):
        raise SettingError(f"{param('objectives')} must be distinct names from {', '.join(OBJECTIVES)}; got "
                           f"{objectives}")
    return objectives


def _layer_input_samples(model, calibration, layers, n_tokens: int, batch_size: int, seed: int):
    """``(n_tokens, in)`` float32 dense inputs per layer at fixed random token positions.

    Layers fed by the same tensor (q/k/v, gate/up) share one sample tensor."""
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randperm(calibration.numel(), generator=generator)[:n_tokens].sort().values
    chunks: dict[str, list[torch.Tensor]] = {}
    aliases: dict[str, str] = {}
    owners: dict[int, tuple[torch.Tensor, str]] = {}  # holds inputs alive so ids stay unique
    window = [0, 0]

    def hook(name, x):
        if id(x) in owners:
            aliases[name] = owners[id(x)][1]
            return
        owners[id(x)] = (x, name)
        flat = x.reshape(-1, x.shape[-1])
        lo, hi = window
        local = positions[(positions >= lo) & (positions < hi)] - lo
        chunks.setdefault(name, []).append(flat[local.to(flat.device)].float())

    handles = [layer.module.register_forward_pre_hook(
        lambda _m, args, name=layer.name: hook(name, args[0])) for layer in layers]
    try:
        device = model_device(model)
        with torch.no_grad():
            for batch in torch.split(calibration, batch_size):
                window[:] = [window[1], window[1] + batch.numel()]
                final_hidden(model, batch.to(device))  # (the hooks record; no logits are formed)
                owners.clear()
    finally:
        for handle in handles:
            handle.remove()
    samples = {name: torch.cat(parts) for name, parts in chunks.items()}
    samples.update({name: samples[owner] for name, owner in aliases.items()})
    return samples


@dataclass
class DenseReference(DenseOutputs):
    """Dense-model quantities cached once per search: the LM-head inputs of
    :class:`~optishear_moo.evaluation.divergence.DenseOutputs`, plus ``statistics`` (the one-shot
    :class:`InputStatistics` of every prunable layer) and ``layer_samples`` (the ``(n_tokens, in)``
    dense inputs used by the reconstruction objective).
    """

    statistics: dict[str, InputStatistics] = field(default_factory=dict)
    layer_samples: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, calibration: torch.Tensor, batch_size: int = 8,
              reconstruction_tokens: int = 0, seed: int = 0, progress: bool = False,
              with_gram: bool = False) -> DenseReference:
        layers = get_adapter(model).prunable_layers(model)
        with recording_inputs(layers, with_gram) as statistics:
            dense = DenseOutputs.build(model, calibration, batch_size, progress)
        samples = (_layer_input_samples(model, calibration, layers, reconstruction_tokens, batch_size, seed)
                   if reconstruction_tokens else {})
        return cls(dense.calibration, dense.batch_size, dense.head_inputs, statistics=statistics,
                   layer_samples=samples)


class FitnessEvaluator:
    """Scores keep-masks on one working model that it prunes in place and always restores (one
    candidate at a time; :class:`~optishear_moo.optishear.problem.OptiShearProblem` scores its
    forward objectives in one block walk per population and uses this for the others)."""

    def __init__(self, model: nn.Module, reference: DenseReference, objectives=("kl",)):
        self.model = model
        self.reference = reference
        self.objectives = check_objectives(objectives)
        if "reconstruction" in self.objectives and not reference.layer_samples:
            raise ValueError("the reconstruction objective needs a reference built with "
                             "reconstruction_tokens > 0")
        self.layers: list[PrunableLayer] = get_adapter(model).prunable_layers(model)
        self._snapshot: DenseSnapshot | None = None
        self.n_prunable = sum(layer.numel for layer in self.layers)
        self._factors: dict | None = None
        self._dense_norms: dict[str, float] = {}  # ‖W X‖ of each layer, computed once

    @property
    def snapshot(self) -> DenseSnapshot:
        """A copy of the dense prunable weights, taken at first use (scoring whole-model masks in
        place needs it; the block walk does not)."""
        if self._snapshot is None:
            self._snapshot = DenseSnapshot(self.layers)
        return self._snapshot

    @property
    def factors(self) -> dict:
        """One Hessian factor per distinct dense input, for weight updates (computed on first use)."""
        if self._factors is None:
            if any(stats.gram is None for stats in self.reference.statistics.values()):
                raise ValueError("weight updates need a reference built with with_gram=True")
            self._factors = shared_factors(self.reference.statistics)
        return self._factors

    @torch.no_grad()
    def evaluate(self, masks: Mapping[str, torch.Tensor], fidelity: float = 1.0,
                 update: str = "none", objectives=None) -> dict[str, float]:
        """Objective values of the model pruned by ``masks`` (and its kept weights reconstructed
        by ``update``, from the dense inputs); ``fidelity`` in (0, 1] uses that share of the
        calibration samples (the first ones) for the forward objectives; ``objectives``, a subset
        of the evaluator's, computes only those."""
        objectives = self.objectives if objectives is None else tuple(objectives)
        snapshot = self.snapshot  # taken (once) while the model is dense, before anything is pruned
        values = {}
        if "density" in objectives:
            kept = sum(int(mask.count_nonzero()) for mask in masks.values())
            pruned_elsewhere = self.n_prunable - sum(mask.numel() for mask in masks.values())
            values["density"] = (kept + pruned_elsewhere) / self.n_prunable
        if update == "none":
            if "reconstruction" in objectives:
                values["reconstruction"] = self._reconstruction(
                    {name: snapshot.dense_weight(name).float() * ~mask for name, mask in masks.items()})
            if FORWARD_OBJECTIVES & set(objectives):
                apply_masks_(self.layers, masks)
                try:
                    values.update(self._forward_objectives(fidelity, objectives))
                finally:
                    snapshot.restore()
            return {name: values[name] for name in objectives}
        if not ({"reconstruction"} | FORWARD_OBJECTIVES) & set(objectives):
            return {name: values[name] for name in objectives}
        try:
            for layer in self.layers:
                reconstruct_(layer.weight, masks[layer.name], update, factor=self.factors[layer.name])
            if "reconstruction" in objectives:
                values["reconstruction"] = self._reconstruction(
                    {layer.name: snapshot.dense_weight(layer.name).float() - layer.weight.float()
                     for layer in self.layers})
            if FORWARD_OBJECTIVES & set(objectives):
                values.update(self._forward_objectives(fidelity, objectives))
        finally:
            snapshot.restore()
        return {name: values[name] for name in objectives}

    def _reconstruction(self, removed: Mapping[str, torch.Tensor]) -> float:
        """Mean over layers of ‖(W − W′) X‖ / ‖W X‖ for ``removed[name] = W − W′``."""
        errors = [self.layer_error(layer.name, removed[layer.name]) for layer in self.layers]
        return sum(errors) / len(errors)

    def layer_error(self, name: str, removed: torch.Tensor, dense: torch.Tensor | None = None) -> float:
        """‖(W − W′) X‖ / ‖W X‖ of one layer, ``removed = W − W′``, X its dense input samples
        (``dense``: W where it is at hand, else the snapshot's; only read the first time)."""
        x = self.reference.layer_samples[name]
        if name not in self._dense_norms:
            dense = (self.snapshot.dense_weight(name) if dense is None else dense).float()
            self._dense_norms[name] = max(float((x @ dense.to(x.device).t()).norm()), 1e-12)
        return float((x @ removed.to(x.device).t()).norm()) / self._dense_norms[name]

    def _forward_objectives(self, fidelity: float, objectives) -> dict[str, float]:
        return distance_to_dense(self.model, compared_batches(self.model, self.reference, fidelity),
                                 [o for o in objectives if o in FORWARD_OBJECTIVES])


def build_reference(model, calibration, objectives, batch_size=8, reconstruction_tokens=256,
                    seed=0, progress=False, with_gram: bool = False) -> DenseReference:
    """A :class:`DenseReference` holding what ``objectives`` (and weight updates) need."""
    tokens = reconstruction_tokens if "reconstruction" in check_objectives(objectives) else 0
    return DenseReference.build(model, calibration, batch_size, tokens, seed, progress, with_gram)
