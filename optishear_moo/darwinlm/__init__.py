"""DarwinLM (arXiv 2502.07780): training-aware structured pruning of attention head groups and
MLP channels at non-uniform levels, searched with pymoo over a structured level database;
:func:`search_darwinlm` runs the whole pipeline."""

from .config import DarwinLMConfig
from .database import StructuredLevelDatabase, kept_parameters
from .fitness import StructuredEvaluator
from .problem import StructuredPruningProblem, darwinlm_algorithm
from .search import DarwinLMResult, search_darwinlm
from .slicing import apply_levels_

__all__ = ["DarwinLMConfig", "DarwinLMResult", "StructuredEvaluator", "StructuredLevelDatabase",
           "StructuredPruningProblem", "apply_levels_", "darwinlm_algorithm", "kept_parameters",
           "search_darwinlm"]
