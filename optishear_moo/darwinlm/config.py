"""The settings of a DarwinLM structured-pruning search, checked when made (before any model
loads, and against the model's config before its weights load)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import SettingError, at_least, param
from ..search.levels import halving_stages
from .fitness import check_scoring_name
from .problem import check_compression_target

SELECTIONS = ("training-aware", "one-shot")


@dataclass(frozen=True)
class DarwinLMConfig:
    """How :func:`~optishear_moo.darwinlm.search_darwinlm` searches structured levels.

    Args:
        target_compression: Block-weight compression (dense / kept weights), or ``(low, high)``
            for a size-vs-quality front (one-shot selection; the most compressed point is chosen).
        selection: ``training-aware`` (offspring are fine-tuned briefly before each selection
            stage, as DarwinLM) or ``one-shot`` (selected by their KL as they are).
        finetune_tokens: Fine-tuning tokens per training-aware stage, growing; survivors halve per
            stage down to ``pop_size``.
        learning_rate: Learning rate of the stage fine-tunes.
        mlp_levels: MLP levels per block (must divide ``intermediate_size``; default: about 10).
        pop_size: Parents kept per generation.
        n_offsprings: Offspring per generation.
        n_gen: Generations.
        batch_size: Calibration windows per forward pass.
        scoring: How one-shot scores are computed: ``walk`` (the population in one walk over the
            blocks, dense-shaped; what a model loaded with ``offload`` needs), ``slice`` (one
            sliced forward per candidate) or ``auto`` (walk unless an output projection has a bias).
        database_dir: Keep the level database on disk here (one safetensors file per block and
            unit, read when a candidate needs it) instead of in memory, where it takes about
            ``mlp_levels / 2`` times the MLP output projections' bytes (0.72 GiB for SmolLM2 at its
            default 12 MLP levels in float32).
    """

    target_compression: float | tuple[float, float] = 1.5
    selection: str = "training-aware"
    finetune_tokens: tuple[int, ...] = (512, 1024, 2048)
    learning_rate: float = 1e-4
    mlp_levels: int | None = None
    pop_size: int = 1
    n_offsprings: int = 16
    n_gen: int = 10
    batch_size: int = 8
    scoring: str = "auto"
    database_dir: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "target_compression", check_compression_target(self.target_compression))
        if self.selection not in SELECTIONS:
            raise SettingError(f"{param('selection')} {self.selection!r} is unknown: use one of "
                               f"{', '.join(SELECTIONS)}")
        if self.selection == "training-aware" and isinstance(self.target_compression, tuple):
            raise SettingError(f"{param('selection')} training-aware needs one "
                               f"{param('target_compression')}; use one-shot selection for a (low, high) "
                               f"front")
        object.__setattr__(self, "finetune_tokens", tuple(self.finetune_tokens))
        if self.selection == "training-aware":
            self.stages()
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, (int, float)) or not (
                self.learning_rate > 0):
            raise SettingError(f"{param('learning_rate')} must be positive, got {self.learning_rate!r}")
        if self.mlp_levels is not None:
            at_least("mlp_levels", self.mlp_levels, 1)
        for name in ("pop_size", "n_offsprings", "n_gen", "batch_size"):
            at_least(name, getattr(self, name), 1)
        check_scoring_name(self.scoring)

    def stages(self):
        """The training-aware selection stages (None for one-shot selection)."""
        if self.selection != "training-aware":
            return None
        return halving_stages(self.pop_size, finetune_tokens=self.finetune_tokens)

    @property
    def training_tokens(self) -> int:
        """Fine-tuning tokens the largest stage needs (0 for one-shot selection)."""
        return max(self.finetune_tokens) if self.selection == "training-aware" else 0

    def check_model(self, model_config) -> None:
        """The model's family supports structured pruning, ``mlp_levels`` divides its MLP, and its
        level steps reach the target (read from its config, no weights needed)."""
        from ..models.sliced import check_structured_model
        from .database import check_reachable

        check_structured_model(model_config)
        size = model_config.intermediate_size
        if self.mlp_levels is not None and size % self.mlp_levels:
            raise SettingError(f"{param('mlp_levels')} must divide intermediate_size={size}, got "
                               f"{self.mlp_levels}")
        target = self.target_compression
        if isinstance(target, tuple):  # a front may end past its high target; its low end must be reachable
            check_reachable(model_config, target[0], self.mlp_levels)
            check_reachable(model_config, target[1], self.mlp_levels, tolerance=float("inf"))
        else:
            check_reachable(model_config, target, self.mlp_levels)

    def to_dict(self) -> dict:
        """The settings that shape the search (``database_dir`` only says where it is kept)."""
        values = asdict(self)
        values["finetune_tokens"] = list(self.finetune_tokens)
        del values["database_dir"]
        return values
