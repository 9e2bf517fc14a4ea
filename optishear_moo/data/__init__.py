"""Shipped corpora and calibration sampling."""

from .calibration import DEFAULT_CALIBRATION_SOURCE, load_calibration, random_windows, tokenize_text
from .corpora import SHIPPED_CORPORA, corpus_text, load_corpus

__all__ = [
    "DEFAULT_CALIBRATION_SOURCE",
    "SHIPPED_CORPORA",
    "corpus_text",
    "load_calibration",
    "load_corpus",
    "random_windows",
    "tokenize_text",
]
