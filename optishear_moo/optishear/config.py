"""The settings of an OptiShear search, checked when made (before any model loads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import SettingError, at_least, param
from ..pruning.masks import check_sparsity_target, parse_nm
from ..pruning.update import check_update
from ..search.algorithms import check_algorithm
from .encoding import LAYERWISE
from .fitness import check_objectives


@dataclass(frozen=True)
class OptiShearConfig:
    """How :func:`~optishear_moo.optishear.search_optishear` searches.

    Args:
        target_sparsity: Mean sparsity of the prunable weights, or ``(low, high)`` to search the
            size too (with the ``density`` objective).
        objectives: Minimised objectives, any of ``kl``, ``output_error``, ``reconstruction``,
            ``density`` (see :mod:`optishear_moo.optishear.fitness`).
        layerwise: Per-block sparsity: ``continuous``, ``discrete`` (target ± step) or ``uniform``.
        nm: An N:M pattern such as ``(2, 4)`` or ``"2:4"`` (then only the metric is searched).
        algorithm: ``nsga2``, ``nsga3``, ``agemoea``, ``smsemoa``; ``ga``, ``de``, ``cmaes`` with one
            objective (see :func:`~optishear_moo.search.make_algorithm`).
        pop_size: Population size (the baselines are in the first population).
        n_gen: Generations.
        n_evals: A budget in scored candidates instead of ``n_gen``: the search stops after the
            generation in which its count reaches it (the first population included; offspring
            pymoo drops as duplicates are not scored and do not count), so it scores at least this
            many, and fewer than a generation's offspring more. ``None``: ``n_gen`` generations.
            What a comparison with another search at equal evaluations needs.
        low_fidelity: Share of the calibration windows that score the first ``low_fidelity_gens``
            generations (1: off); the final front is scored on all of them.
        low_fidelity_gens: Generations scored at low fidelity.
        update: Weight update of every candidate's kept weights: ``none``, ``obs`` (SparseGPT's
            OBS update for the candidate's mask) or ``lstsq``.
        search_update: Search the update as a gene (the joint space: metric, allocation, update).
        batch_size: Calibration windows per forward pass.
        reconstruction_tokens: Tokens per layer that the ``reconstruction`` objective uses.
    """

    target_sparsity: float | tuple[float, float] = 0.5
    objectives: tuple[str, ...] = ("kl", "reconstruction")
    layerwise: str = "continuous"
    nm: tuple[int, int] | None = None
    algorithm: str = "nsga2"
    pop_size: int = 16
    n_gen: int = 10
    n_evals: int | None = None
    low_fidelity: float = 1.0
    low_fidelity_gens: int = 3
    update: str = "none"
    search_update: bool = False
    batch_size: int = 8
    reconstruction_tokens: int = 256

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "target_sparsity", check_sparsity_target(self.target_sparsity))
        set_(self, "objectives", check_objectives(self.objectives))
        set_(self, "nm", parse_nm(self.nm))
        if self.layerwise not in LAYERWISE:
            raise SettingError(f"{param('layerwise')} {self.layerwise!r} is unknown: use one of "
                               f"{', '.join(LAYERWISE)}")
        set_(self, "algorithm", check_algorithm(self.algorithm, len(self.objectives)))
        if "density" in self.objectives and not isinstance(self.target_sparsity, tuple):
            raise SettingError(f"the density objective needs {param('target_sparsity')} (low, high) to "
                               "search size")
        at_least("pop_size", self.pop_size, 2)
        at_least("n_gen", self.n_gen, 1)
        if self.n_evals is not None:
            at_least("n_evals", self.n_evals, 1)
        at_least("low_fidelity_gens", self.low_fidelity_gens, 0)
        at_least("batch_size", self.batch_size, 1)
        at_least("reconstruction_tokens", self.reconstruction_tokens, 1)
        if not isinstance(self.low_fidelity, (int, float)) or not 0 < self.low_fidelity <= 1:
            raise SettingError(f"{param('low_fidelity')} must be in (0, 1] (1: off), got "
                               f"{self.low_fidelity!r}")
        check_update(self.update)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["nm"] = f"{self.nm[0]}:{self.nm[1]}" if self.nm else None
        return values
