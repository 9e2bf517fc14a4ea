"""OptiShear (arXiv 2502.10735): a searched meta pruning metric and layerwise sparsity, as a
pymoo problem, with serialisable pruning plans; :func:`search_optishear` runs the whole pipeline."""

from .config import OptiShearConfig
from .encoding import LAYERWISE, BalancedSparsityRepair, SearchSpace
from .fitness import OBJECTIVES, DenseReference, FitnessEvaluator
from .meta_metric import MetaMetric, RankedMetricMasks, metric_masks
from .plan import PruningPlan
from .problem import OptiShearProblem
from .search import OptiShearResult, search_optishear

__all__ = ["LAYERWISE", "OBJECTIVES", "BalancedSparsityRepair", "DenseReference", "FitnessEvaluator",
           "MetaMetric", "OptiShearConfig", "OptiShearProblem", "OptiShearResult", "PruningPlan",
           "RankedMetricMasks", "SearchSpace", "metric_masks", "search_optishear"]
