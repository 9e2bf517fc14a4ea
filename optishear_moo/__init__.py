"""optishear-moo: evolutionary multi-objective pruning of LLMs as a native pymoo plugin."""

from .activations import InputStatistics, collect_input_statistics, sequential_blocks
from .block_search import BlockChoice, choose_blocks
from .data import calibration_diversity, load_calibration, load_corpus
from .evaluation import PerplexityResult, perplexity
from .finetuning import post_train
from .models import DEFAULT_MODEL, get_adapter, load_model, load_tokenizer
from .plan import PruningPlan
from .problems import BlockRemovalProblem, OptiShearProblem, StructuredPruningProblem
from .pruning import (
    DenseSnapshot,
    MetaMetric,
    PruningConfig,
    PruningResult,
    masks_applied,
    prune_model,
    sparsity_report,
)
from .pruning.blocks import remove_blocks_
from .pruning.structured import LevelDatabase, apply_levels_
from .structured_search import StructuredChoice, halving_stages, search_structured

__version__ = "0.1.0"

__all__ = [
    "BlockChoice",
    "BlockRemovalProblem",
    "DEFAULT_MODEL",
    "DenseSnapshot",
    "InputStatistics",
    "LevelDatabase",
    "MetaMetric",
    "OptiShearProblem",
    "PerplexityResult",
    "PruningConfig",
    "PruningPlan",
    "PruningResult",
    "StructuredChoice",
    "StructuredPruningProblem",
    "apply_levels_",
    "calibration_diversity",
    "choose_blocks",
    "collect_input_statistics",
    "get_adapter",
    "halving_stages",
    "load_calibration",
    "load_corpus",
    "load_model",
    "load_tokenizer",
    "masks_applied",
    "perplexity",
    "post_train",
    "prune_model",
    "remove_blocks_",
    "search_structured",
    "sequential_blocks",
    "sparsity_report",
]
