"""The settings of an EvoP block-removal search, checked when made (before any model loads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import SettingError, at_least, param
from .fitness import check_block_objective

BLOCK_METHODS = ("evop", "shortgpt", "sleb", "last")


@dataclass(frozen=True)
class EvoPConfig:
    """How :func:`~optishear_moo.evop.search_evop` chooses the decoder blocks to remove.

    Args:
        n_remove: Blocks to remove, or ``(low, high)`` for a size-vs-quality front (``evop`` only;
            the largest removal is chosen).
        method: ``evop`` (the evolutionary search, warm-started with ShortGPT's and the last
            blocks' choices), or a heuristic: ``shortgpt`` (lowest block influence), ``sleb``
            (greedy removal by calibration perplexity), ``last`` (the blocks before the final one).
        objective: The search's fitness: ``kl`` to the dense model, or calibration ``ppl``.
        pop_size: Population size (``evop``).
        n_gen: Generations (``evop``).
        batch_size: Calibration windows per forward pass.
    """

    n_remove: int | tuple[int, int] = 6
    method: str = "evop"
    objective: str = "kl"
    pop_size: int = 16
    n_gen: int = 10
    batch_size: int = 8

    def __post_init__(self):
        if self.method not in BLOCK_METHODS:
            raise SettingError(f"{param('method')} {self.method!r} is not a block-removal method: choose one "
                               f"of {', '.join(BLOCK_METHODS)}")
        counts = self.n_remove if isinstance(self.n_remove, (tuple, list)) else (self.n_remove,)
        if isinstance(self.n_remove, (tuple, list)):
            integers = all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
            if len(counts) != 2 or not integers or not counts[0] < counts[1]:
                raise SettingError(f"an {param('n_remove')} range (low, high) needs integers low < high, got "
                                   f"{self.n_remove!r}")
            if self.method != "evop":
                raise SettingError(f"an {param('n_remove')} range needs {param('method')} evop (the "
                                   "heuristics remove a fixed count)")
            object.__setattr__(self, "n_remove", tuple(counts))
        for count in counts:
            at_least("n_remove", count, 0)
        check_block_objective(self.objective)
        at_least("pop_size", self.pop_size, 2)
        at_least("n_gen", self.n_gen, 1)
        at_least("batch_size", self.batch_size, 1)

    def check_model(self, model_config) -> None:
        """Every count leaves at least one of the model's blocks (read from its config)."""
        n_blocks = model_config.num_hidden_layers
        for count in self.n_remove if isinstance(self.n_remove, tuple) else (self.n_remove,):
            if count >= n_blocks:
                raise SettingError(f"{param('n_remove')} must be an integer in [0, {n_blocks}) for a model "
                                   f"of {n_blocks} blocks, got {count}")

    @property
    def multi_objective(self) -> bool:
        return isinstance(self.n_remove, tuple)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["n_remove"] = list(self.n_remove) if self.multi_objective else self.n_remove
        return values
