"""DarwinLM as pymoo parts: the structured-pruning problem (a level problem of
:mod:`optishear_moo.search.levels`, whose budget-keeping sampling, level-switch mutation and staged
selection it uses) and its algorithm, with training-aware selection.

Decision vector: ``[attention_0, mlp_0, attention_1, mlp_1, ...]``, the level of every unit
(see :mod:`.database`). Size is measured on the blocks' projection weights
(embeddings, norms and the LM head are not pruned): ``compression = dense / kept``.

With one ``target_compression`` the budget is held exactly: sampling starts from the most
uniform allocation that meets the target and only applies level switches (one unit up, another
unit of the same kind down), which never change the parameter count. With a
``(low, high)`` range, a second objective (share of block weights kept) gives the size-vs-quality
front, and the mutation may also move single levels.
"""

from __future__ import annotations

import numpy as np
import torch
from pymoo.core.variable import Integer

from ..errors import SettingError, one_or_range, param
from ..models.sliced import UNITS
from ..search.levels import StagedSurvival, check_stages, level_algorithm
from ..search.problem import ModelProblem, problem_fingerprint
from .database import StructuredLevelDatabase, kept_parameters, uniform_levels
from .fitness import StructuredEvaluator, check_scoring, refuse_finetunes_when_streamed


def check_compression(value, name: str = "target_compression") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 1:
        raise SettingError(f"{param(name)} must be a number above 1 (dense / kept weights), got {value!r}")
    return float(value)


def check_compression_target(value, name: str = "target_compression") -> float | tuple[float, float]:
    """One compression above 1, or a ``(low, high)`` range with ``low < high``."""
    return one_or_range(value, name, lambda one: check_compression(one, name))


class StructuredPruningProblem(ModelProblem):
    """Levels of every attention and MLP unit; fitness = KL to the dense model (one-shot).

    The working ``model`` is sliced in place while the problem is used; ``restore_dense()`` gives
    it back dense. Constraints hold the size: with one target, the share of block weights kept may
    not exceed that of the uniform allocation (the budget-keeping operators of
    :mod:`optishear_moo.search.levels` never leave it); with a range, the share stays inside it.
    Candidates may be integer vectors or dicts of pymoo ``Integer`` variables
    ``attention_i``/``mlp_i``.

    Args:
        model: The dense model (Llama-family attention and gated MLP).
        calibration: ``(n_samples, seq_len)`` token ids that score candidates.
        target_compression: Block-weight compression (dense / kept), or ``(low, high)``.
        database: A :class:`StructuredLevelDatabase` of this model (built here when None).
        training: ``(n, seq_len)`` windows the stage fine-tunes of training-aware selection use
            (default: the calibration windows).
        mlp_levels: MLP levels of a database built here.
        batch_size: Calibration windows per forward pass.
        finetune_learning_rate: Learning rate of the stage fine-tunes.
        progress: Show progress while the dense references (and database) are computed.
        scoring: How one-shot scores are computed: ``walk`` (the population in one walk over the
            blocks, dense-shaped), ``slice`` (a sliced forward per candidate), or ``auto`` (walk
            unless an output projection has a bias); see :mod:`.fitness`.
        device: Where a walk runs the blocks (default: the model's compute device).
        workers: Evaluate on this many Ray workers, or on a ``RayPool``.
        ray_address: The Ray cluster to join.
        **problem_kwargs: Passed to ``pymoo.core.problem.Problem``.
    """

    def __init__(self, model, calibration: torch.Tensor, target_compression,
                 database: StructuredLevelDatabase | None = None, training: torch.Tensor | None = None,
                 mlp_levels: int | None = None, batch_size: int = 8,
                 finetune_learning_rate: float = 1e-4, progress: bool = False, scoring: str = "auto",
                 device: str | torch.device | None = None, workers=None,
                 ray_address: str | None = None, **problem_kwargs):
        target_compression = check_compression_target(target_compression)
        check_scoring(scoring, model)  # before the database
        database = database or StructuredLevelDatabase.build(model, calibration, mlp_levels,
                                                             batch_size=batch_size, progress=progress)
        replica = dict(model=model, calibration=calibration, target_compression=target_compression,
                       database=database, training=training, batch_size=batch_size,
                       finetune_learning_rate=finetune_learning_rate, scoring=scoring, device=device,
                       **problem_kwargs)
        self.multi_objective = isinstance(target_compression, (tuple, list))
        targets = target_compression if self.multi_objective else (target_compression, target_compression)
        self.compression_range = (targets[0], targets[-1])
        self.model = model
        self.database = database
        self.evaluator = StructuredEvaluator(model, self.database, calibration, batch_size, progress, scoring,
                                             device)
        self.training = calibration if training is None else training
        self.finetune_learning_rate = finetune_learning_rate
        self.dense_parameters = kept_parameters(self.database, np.zeros((self.database.n_blocks, 2), int))
        self.tops = np.array([self.database.n_levels[unit] for unit in UNITS])
        self.eval_samples: int | None = None
        n_blocks = self.database.n_blocks
        variables = {f"{unit}_{block}": Integer(bounds=(0, int(top)))
                     for block in range(n_blocks) for unit, top in zip(UNITS, self.tops)}
        fingerprint = problem_fingerprint(type(self).__name__, model, calibration, self.compression_range,
                                          self.database.n_levels, batch_size)
        super().__init__(n_var=2 * n_blocks, n_obj=2 if self.multi_objective else 1,
                         n_ieq_constr=2 if self.multi_objective else 1, xl=0,
                         xu=np.tile(self.tops, n_blocks), vtype=int, vars=variables, replica=replica,
                         fingerprint=fingerprint, workers=workers, ray_address=ray_address,
                         exclude_from_serialization=["model", "database", "evaluator", "training"],
                         **problem_kwargs)
        self.budget_share = self.kept_share(self.uniform_levels(self.compression_range[0]))
        # level groups of interchangeable genes: every attention gene, every MLP gene
        self.level_groups = [np.arange(column, 2 * n_blocks, 2) for column in range(len(UNITS))]
        steps = np.array([self.database.unit_parameters(unit) / self.database.n_levels[unit]
                          for unit in UNITS])
        self.group_weights = steps / steps.sum()

    @property
    def size_range(self) -> tuple[float, float]:
        return self.compression_range

    def uniform_x(self, compression: float) -> np.ndarray:
        return self.uniform_levels(compression)

    def stage_score(self, x, stage) -> float:
        return self.finetuned_kl(x, stage.finetune_tokens, stage.eval_samples)

    @property
    def objectives(self) -> tuple[str, ...]:
        return ("kl", "kept_share") if self.multi_objective else ("kl",)

    def levels(self, x) -> np.ndarray:
        """``(n_blocks, 2)`` levels (attention, mlp) of a vector or dict of variables."""
        return np.rint(np.asarray(self.as_vector(x), dtype=float)).astype(int).reshape(-1, 2)

    decode = levels

    def describe(self, x) -> dict:
        share = self.kept_share(x)
        return {"levels": self.levels(x).tolist(), "kept_share": share, "compression": 1 / share}

    def kept_share(self, x) -> float:
        """Share of the blocks' projection weights that ``x`` keeps (1 / compression)."""
        return kept_parameters(self.database, self.levels(x)) / self.dense_parameters

    def uniform_levels(self, compression: float) -> np.ndarray:
        """The most uniform allocation for ``compression`` (see :func:`.database.uniform_levels`)."""
        return uniform_levels(self.database, check_compression(compression)).reshape(-1)

    def _evaluate_vectors(self, X, out, *args, **kwargs):
        X = np.rint(np.asarray(X, dtype=float)).astype(int)  # real-valued algorithms give reals
        F = np.empty((len(X), self.n_obj))
        shares = np.array([self.kept_share(x) for x in X])
        F[:, 0] = self.evaluator.evaluate_many([self.levels(x) for x in X], self.eval_samples,
                                               self.candidate_done, self.block_done)
        if self.multi_objective:
            F[:, 1] = shares
            low, high = 1 / self.compression_range[1], 1 / self.compression_range[0]
            out["G"] = np.column_stack([low - shares, shares - high])
        else:
            out["G"] = (shares - self.budget_share - 1e-12)[:, None]
        out["F"] = F

    def finetuned_kl(self, x, finetune_tokens: int, eval_samples: int | None = None) -> float:
        """KL after fine-tuning the candidate on its first ``finetune_tokens`` training tokens."""
        n_windows = max(1, round(finetune_tokens / self.training.shape[1])) if finetune_tokens else 0
        if n_windows > len(self.training):
            raise SettingError(f"a stage asks for {finetune_tokens} fine-tuning tokens but the training "
                             f"set holds {self.training.numel()}: pass more training windows")
        if not n_windows:
            return self.evaluator.evaluate(self.levels(x), eval_samples)
        return self.evaluator.finetune_and_evaluate(self.levels(x), self.training[:n_windows],
                                                    self.finetune_learning_rate, n_samples=eval_samples)

    def restore_dense(self):
        return self.evaluator.restore_dense()


def darwinlm_algorithm(problem: StructuredPruningProblem, pop_size: int = 1, n_offsprings: int = 16,
                       stages=None):
    """pymoo's GA (NSGA-II for a compression range) with the level operators of
    :mod:`optishear_moo.search.levels` (budget sampling, level-switch mutation, no crossover) and,
    given ``stages`` (:func:`~optishear_moo.search.halving_stages` with ``finetune_tokens``),
    training-aware selection: survivors carry their last score in ``ind.data["finetuned_kl"]``;
    ``F`` stays the one-shot KL."""
    if problem.multi_objective and stages:
        raise SettingError("training-aware selection needs one target compression (one objective)")
    stages = check_stages(stages, pop_size) if stages else None
    if stages and any(stage.finetune_tokens for stage in stages):
        refuse_finetunes_when_streamed(problem.model)
    survival = StagedSurvival(stages, score_name="finetuned_kl") if stages else None
    return level_algorithm(problem, pop_size, n_offsprings, survival)
