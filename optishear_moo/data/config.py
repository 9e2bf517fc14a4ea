"""The calibration windows a search works with, by role, and the settings that load them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch

from ..errors import SettingError, at_least, param
from .calibration import SAMPLINGS, check_calibration, check_context, load_calibration
from .corpora import corpus_text


@dataclass(frozen=True)
class CalibrationSet:
    """Token windows by role, each ``(n_windows, seq_len)`` int64.

    Args:
        search: Windows that score candidates during the search.
        prune: Windows the final model (and any level database) is pruned from; None: ``search``.
        validation: Held-out windows (other text) that choose among the search's final candidates;
            None: chosen on the search windows.
        training: Windows for the short fine-tunes of training-aware selection (DarwinLM);
            None: ``search``.
    """

    search: torch.Tensor
    prune: torch.Tensor | None = None
    validation: torch.Tensor | None = None
    training: torch.Tensor | None = None

    def __post_init__(self):
        check_calibration(self.search, what="search windows")
        for name in ("prune", "validation", "training"):
            if getattr(self, name) is not None:
                check_calibration(getattr(self, name), what=f"{name} windows")

    @property
    def pruning(self) -> torch.Tensor:
        """The windows to prune from (``prune``, else ``search``)."""
        return self.search if self.prune is None else self.prune

    @classmethod
    def of(cls, calibration) -> CalibrationSet:
        """``calibration`` as a set: a tensor serves every role."""
        return calibration if isinstance(calibration, cls) else cls(calibration)


@dataclass(frozen=True)
class CalibrationConfig:
    """Where calibration windows come from and how many, for each role of :class:`CalibrationSet`.

    Args:
        source: Calibration text: a shipped corpus (``gutenberg``, ``wikitext2-valid``), a text
            file, or ``hf:NAME[:CONFIG][:SPLIT]``.
        sampling: ``random`` windows, or EvoP's ``cluster``-based sampling.
        n_clusters: k-means clusters of ``cluster`` sampling (default 8, at most ``n_samples``).
        n_samples: Windows that score candidates.
        seq_len: Tokens per window.
        prune_samples: Windows the final model is pruned from (default: ``n_samples``).
        prune_seq_len: Tokens per pruning window (default: ``seq_len``).
        validation_source: Text of the held-out windows (never the calibration text).
        validation_samples: Held-out windows (0: none).
        validation_seq_len: Tokens per held-out window (default: ``seq_len``).
        training_source: Text of the fine-tuning windows (default: ``source``).
        training_tokens: Fine-tuning tokens to load (0: none).
        seed: Seeds the windows' offsets (training windows use ``seed + 1``).
        batch_size: Windows per forward pass while embedding windows for cluster sampling.
    """

    source: str = "gutenberg"
    sampling: str = "random"
    n_clusters: int | None = None
    n_samples: int = 32
    seq_len: int = 512
    prune_samples: int | None = None
    prune_seq_len: int | None = None
    validation_source: str = "wikitext2-valid"
    validation_samples: int = 0
    validation_seq_len: int | None = None
    training_source: str | None = None
    training_tokens: int = 0
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self):
        at_least("n_samples", self.n_samples, 1)
        at_least("seq_len", self.seq_len, 2)
        at_least("batch_size", self.batch_size, 1)
        at_least("validation_samples", self.validation_samples, 0)
        at_least("training_tokens", self.training_tokens, 0)
        for name, minimum in (("prune_samples", 1), ("prune_seq_len", 2), ("validation_seq_len", 2)):
            if getattr(self, name) is not None:
                at_least(name, getattr(self, name), minimum)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SettingError(f"{param('seed')} must be an integer, got {self.seed!r}")
        if self.sampling not in SAMPLINGS:
            raise SettingError(f"{param('sampling')} {self.sampling!r} is not a calibration sampling: choose "
                               f"one of {', '.join(SAMPLINGS)}")
        if self.n_clusters is not None:
            at_least("n_clusters", self.n_clusters, 1)
            if self.n_clusters > self.n_samples:
                raise SettingError(f"{param('n_clusters')} {self.n_clusters} exceeds {param('n_samples')} "
                                   f"{self.n_samples}: choose at most as many clusters as windows")

    @property
    def pruning_shape(self) -> tuple[int, int]:
        return (self.prune_samples or self.n_samples, self.prune_seq_len or self.seq_len)

    @property
    def training_windows(self) -> int:
        return math.ceil(self.training_tokens / self.seq_len)

    def check_sources(self) -> None:
        """Read the local texts (shipped corpora, files) now, so a bad one fails before any model
        loads; ``hf:`` sources are read when loaded."""
        sources = [self.source, *([self.validation_source] if self.validation_samples else []),
                   *([self.training_source] if self.training_tokens and self.training_source else [])]
        for source in sources:
            if not source.startswith("hf:"):
                corpus_text(source)

    def check_context(self, model_config) -> None:
        """Token lengths no longer than the model's context (``max_position_embeddings``), read from
        its config (no weights needed)."""
        for name in ("seq_len", "prune_seq_len", "validation_seq_len"):
            if getattr(self, name) is not None:
                check_context(getattr(self, name), SimpleNamespace(config=model_config), name)

    def load(self, tokenizer, model=None, progress: bool = False) -> CalibrationSet:
        """The windows, tokenized with the model's ``tokenizer`` (``model`` embeds the candidate
        windows of cluster sampling); pruning windows of the search's shape are the same tensor."""
        def windows(n_samples, seq_len, seed=self.seed, source=self.source, sampled=True):
            return load_calibration(tokenizer, n_samples, seq_len, seed, source,
                                    sampling=self.sampling if sampled else "random",
                                    n_clusters=self.n_clusters if sampled else None, model=model,
                                    batch_size=self.batch_size, progress=progress)

        search = windows(self.n_samples, self.seq_len)
        prune = None if self.pruning_shape == (self.n_samples, self.seq_len) else windows(*self.pruning_shape)
        validation = (windows(self.validation_samples, self.validation_seq_len or self.seq_len,
                              source=self.validation_source, sampled=False)
                      if self.validation_samples else None)
        training = (windows(self.training_windows, self.seq_len, self.seed + 1,
                            self.training_source or self.source, sampled=False)
                    if self.training_tokens else None)
        return CalibrationSet(search, prune, validation, training)

    def to_dict(self) -> dict:
        return asdict(self)
