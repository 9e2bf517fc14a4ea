"""EvoP (arXiv 2502.14910): which decoder blocks to remove, searched with pymoo on a
prefix-cached evaluator, plus the ShortGPT / SLEB / last-block baselines; :func:`search_evop`
runs the whole pipeline."""

from .blocks import block_influence, last_blocks, least_influential, remove_blocks_, shortgpt_blocks
from .config import BLOCK_METHODS, EvoPConfig
from .fitness import BlockRemovalEvaluator, greedy_removal_order
from .problem import BlockRemovalProblem, PassBudget, block_removal_algorithm
from .search import EvoPResult, search_evop

__all__ = ["BLOCK_METHODS", "BlockRemovalEvaluator", "BlockRemovalProblem", "EvoPConfig", "EvoPResult",
           "PassBudget", "block_influence", "block_removal_algorithm", "greedy_removal_order", "last_blocks",
           "least_influential", "remove_blocks_", "search_evop", "shortgpt_blocks"]
