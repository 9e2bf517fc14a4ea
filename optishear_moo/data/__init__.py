"""Shipped corpora and calibration sampling."""

from .calibration import (
    DEFAULT_CALIBRATION_SOURCE,
    SAMPLINGS,
    calibration_diversity,
    load_calibration,
    random_windows,
    tokenize_text,
)
from .cluster_sampling import DiversityReport, hidden_state_embedder
from .corpora import SHIPPED_CORPORA, corpus_text, load_corpus

__all__ = [
    "DEFAULT_CALIBRATION_SOURCE",
    "DiversityReport",
    "SAMPLINGS",
    "SHIPPED_CORPORA",
    "calibration_diversity",
    "corpus_text",
    "load_calibration",
    "load_corpus",
    "hidden_state_embedder",
    "random_windows",
    "tokenize_text",
]
