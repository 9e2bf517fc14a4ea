"""Evaluation of pruned models."""

from .perplexity import PerplexityResult, eval_segments, perplexity
from .speed import SpeedResult, measure_speed

__all__ = ["PerplexityResult", "SpeedResult", "eval_segments", "measure_speed", "perplexity"]
