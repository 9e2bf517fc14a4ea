"""Evaluation of pruned models: held-out perplexity, divergence from the dense model, speed."""

from .divergence import DenseOutputs, kl_sum_to_dense, kl_to_dense
from .perplexity import PerplexityResult, eval_segments, perplexity
from .speed import SpeedComparison, SpeedResult, compare_speed, measure_speed

__all__ = ["DenseOutputs", "PerplexityResult", "SpeedComparison", "SpeedResult", "compare_speed",
           "eval_segments", "kl_sum_to_dense", "kl_to_dense", "measure_speed", "perplexity"]
