"""Shipped corpora, calibration sampling, and the calibration windows of a search by role."""

from .calibration import (
    DEFAULT_CALIBRATION_SOURCE,
    SAMPLINGS,
    calibration_diversity,
    load_calibration,
    random_windows,
    tokenize_text,
)
from .cluster_sampling import DiversityReport, hidden_state_embedder
from .config import CalibrationConfig, CalibrationSet
from .corpora import SHIPPED_CORPORA, corpus_text, load_corpus

__all__ = [
    "DEFAULT_CALIBRATION_SOURCE",
    "SAMPLINGS",
    "SHIPPED_CORPORA",
    "CalibrationConfig",
    "CalibrationSet",
    "DiversityReport",
    "calibration_diversity",
    "corpus_text",
    "hidden_state_embedder",
    "load_calibration",
    "load_corpus",
    "random_windows",
    "tokenize_text",
]
