"""optishear-moo: evolutionary multi-objective pruning of LLMs as a native pymoo plugin.

Four methods, each a pymoo problem with a one-call driver: OptiShear (searched pruning metric,
layerwise sparsity and weight update), EvoPress (per-layer sparsity levels over a SparseGPT
database), EvoP (which blocks to remove) and DarwinLM (training-aware structured pruning).
Everything else is importable from its subpackage (``optishear_moo.pruning``,
``optishear_moo.search``, ``optishear_moo.evaluation``...).
"""

from . import _moved
from ._version import __version__  # noqa: F401 - one source for the package, checkpoints and reports
from .darwinlm import (
    LevelDatabase,
    StructuredChoice,
    StructuredPruningProblem,
    apply_levels_,
    halving_stages,
    search_structured,
)
from .data import calibration_diversity, load_calibration
from .evaluation import perplexity
from .evop import BlockChoice, BlockRemovalProblem, choose_blocks, remove_blocks_
from .evopress import LevelChoice, LevelSearchProblem, search_levels
from .finetuning import post_train
from .models import load_model
from .optishear import OptiShearProblem, OptiShearResult, PruningPlan, search_optishear
from .pruning import prune_model
from .search import plot_pareto, run_search

__all__ = [
    "BlockChoice",
    "BlockRemovalProblem",
    "LevelChoice",
    "LevelDatabase",
    "LevelSearchProblem",
    "OptiShearProblem",
    "OptiShearResult",
    "PruningPlan",
    "StructuredChoice",
    "StructuredPruningProblem",
    "apply_levels_",
    "calibration_diversity",
    "choose_blocks",
    "halving_stages",
    "load_calibration",
    "load_model",
    "perplexity",
    "plot_pareto",
    "post_train",
    "prune_model",
    "remove_blocks_",
    "run_search",
    "search_levels",
    "search_optishear",
    "search_structured",
]

_moved.install()


def __getattr__(name):  # names of the 0.1 top level that now live in a subpackage
    return _moved.moved_attribute(__name__, name)
