"""DarwinLM (arXiv 2502.07780): training-aware structured pruning of attention head groups and
MLP channels at non-uniform levels, searched with pymoo over a level database."""

from .database import LevelDatabase, kept_parameters
from .fitness import StructuredEvaluator
from .problem import (
    SelectionStage,
    StructuredPruningProblem,
    TrainingAwareSurvival,
    darwinlm_algorithm,
)
from .search import StructuredChoice, halving_stages, search_structured
from .slicing import apply_levels_

__all__ = ["LevelDatabase", "SelectionStage", "StructuredChoice", "StructuredEvaluator",
           "StructuredPruningProblem", "TrainingAwareSurvival", "apply_levels_", "darwinlm_algorithm",
           "halving_stages", "kept_parameters", "search_structured"]
