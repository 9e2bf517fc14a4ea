"""optishear-moo: evolutionary multi-objective pruning of LLMs as a native pymoo plugin."""

from .activations import InputStatistics, collect_input_statistics, sequential_blocks
from .data import load_calibration, load_corpus
from .evaluation import PerplexityResult, perplexity
from .models import DEFAULT_MODEL, get_adapter, load_model, load_tokenizer
from .plan import PruningPlan
from .problems import OptiShearProblem
from .pruning import (
    DenseSnapshot,
    MetaMetric,
    PruningConfig,
    PruningResult,
    masks_applied,
    prune_model,
    sparsity_report,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "DenseSnapshot",
    "InputStatistics",
    "MetaMetric",
    "OptiShearProblem",
    "PerplexityResult",
    "PruningConfig",
    "PruningPlan",
    "PruningResult",
    "collect_input_statistics",
    "get_adapter",
    "load_calibration",
    "load_corpus",
    "load_model",
    "load_tokenizer",
    "masks_applied",
    "perplexity",
    "prune_model",
    "sequential_blocks",
    "sparsity_report",
]
