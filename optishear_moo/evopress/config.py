"""The settings of an EvoPress level search, checked when made (before any model loads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import SettingError, at_least, param
from ..pruning.masks import check_sparsity_target
from ..pruning.prune import METHODS, PruningConfig
from .database import DATABASE_INPUTS, sparsity_ladder

#: generations of :func:`search_evopress` and ``optishear-moo evopress`` (16 offspring each): at 70 %
#: on SmolLM2, 10 gave 0.81x and 40 gave 0.64x uniform SparseGPT's perplexity (docs/benchmarks.md)
GENERATIONS = 40

#: the level-database methods ``method="auto"`` compares: SparseGPT is the strongest uniform
#: baseline on SmolLM2, Wanda on Qwen2.5-0.5B (docs/benchmarks.md)
LEVEL_METHOD_CANDIDATES = ("sparsegpt", "wanda")


@dataclass(frozen=True)
class EvoPressConfig:
    """How :func:`~optishear_moo.evopress.search_evopress` searches per-layer sparsity levels.

    Args:
        target_sparsity: Mean sparsity of the prunable weights (kept exactly), or ``(low, high)``
            for a size-vs-quality front (NSGA-II; the sparsest point is chosen).
        method: How the database prunes each level: ``sparsegpt``, ``wanda``, ``ria``,
            ``magnitude``, or ``auto``: whichever of SparseGPT and Wanda, pruning uniformly at the
            target, has the lower KL to the dense model on the validation windows.
        update: Weight update of Wanda/RIA/magnitude levels: ``none``, ``obs`` or ``lstsq``.
        step: Sparsity between levels.
        levels_each_side: Levels below and above the target.
        database_inputs: What each block of the database is pruned from: the blocks before it
            pruned at the target (``pruned``) or the dense model (``dense``, as EvoPress).
        pop_size: Parents kept per generation.
        n_offsprings: Offspring per generation.
        n_gen: Generations.
        n_stages: Multi-fidelity stages: survivors halve while the windows scored double.
        batch_size: Calibration windows per forward pass.
        database_dir: Keep the level database on disk here (one file per layer, memory-mapped when
            read) instead of in memory.
    """

    target_sparsity: float | tuple[float, float] = 0.5
    method: str = "auto"
    update: str = "none"
    step: float = 0.05
    levels_each_side: int = 3
    database_inputs: str = "pruned"
    pop_size: int = 1
    n_offsprings: int = 16
    n_gen: int = GENERATIONS
    n_stages: int = 3
    batch_size: int = 8
    database_dir: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "target_sparsity", check_sparsity_target(self.target_sparsity))
        if self.method != "auto" and self.method not in METHODS:
            raise SettingError(f"{param('method')} {self.method!r} is not a pruning method: use auto or one "
                               f"of {', '.join(METHODS)}")
        for method in LEVEL_METHOD_CANDIDATES if self.method == "auto" else (self.method,):
            update = "none" if method == "sparsegpt" else self.update
            PruningConfig(method, self.densest_target, update=update)
        if self.database_inputs not in DATABASE_INPUTS:
            raise SettingError(f"{param('database_inputs')} {self.database_inputs!r} is unknown: use one of "
                               f"{', '.join(DATABASE_INPUTS)}")
        for name in ("pop_size", "n_offsprings", "n_gen", "n_stages", "batch_size"):
            at_least(name, getattr(self, name), 1)
        at_least("levels_each_side", self.levels_each_side, 0)
        sparsity_ladder(self.target_sparsity, self.step, self.levels_each_side)

    @property
    def densest_target(self) -> float:
        """The target, or a range's sparsest end (where the database and method choice look)."""
        target = self.target_sparsity
        return max(target) if isinstance(target, tuple) else target

    @property
    def multi_objective(self) -> bool:
        return isinstance(self.target_sparsity, tuple)

    def to_dict(self) -> dict:
        """The settings that shape the search (``database_dir`` only says where it is kept)."""
        values = asdict(self)
        del values["database_dir"]
        return values
