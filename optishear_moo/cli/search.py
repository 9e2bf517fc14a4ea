"""``optishear-moo search``: the OptiShear search with a pymoo algorithm (checkpointed, resumable)."""

from __future__ import annotations

import argparse

from .common import (
    MODEL_SETTINGS,
    Job,
    add_model_arguments,
    add_validation_arguments,
    calibration_settings,
    check_positive,
    check_validation,
    front_zero_shot,
    load_search_and_prune_calibration_for,
    load_validation_for,
    value_or_range,
)

SETTINGS = MODEL_SETTINGS + ("target_sparsity", "objectives", "layerwise", "nm", "algorithm", "pop", "gens",
                             "low_fidelity", "low_fidelity_gens",
                             "prune_samples", "prune_seq_len", "update", "search_update", "validation",
                             "validation_samples")


def add_parser(commands) -> None:
    search = commands.add_parser("search", help="OptiShear search with a pymoo algorithm")
    search.add_argument("--target-sparsity", default="0.5",
                        help="target sparsity, or LOW:HIGH to search size too (default: 0.5)")
    search.add_argument("--objectives", default="kl,reconstruction",
                        help="comma-separated: kl, output_error, reconstruction, density")
    search.add_argument("--layerwise", default="continuous", help="continuous, discrete or uniform")
    search.add_argument("--nm", default=None, help="N:M pattern (searches the metric only)")
    search.add_argument("--algorithm", default="nsga2",
                        help="nsga2, nsga3, agemoea, smsemoa; ga, de, cmaes with one objective")
    search.add_argument("--pop", type=int, default=16, help="population size (default: 16)")
    search.add_argument("--gens", type=int, default=None,
                        help="generations (default: 10; with --resume: those of the first run)")
    search.add_argument("--low-fidelity", type=float, default=1.0,
                        help="share of calibration samples for the first --low-fidelity-gens "
                             "generations (default 1: off); the front is re-scored on all of them")
    search.add_argument("--low-fidelity-gens", type=int, default=3)
    search.add_argument("--update", default="none",
                        help="reconstruct every candidate's kept weights: none, obs or lstsq (default: none)")
    search.add_argument("--search-update", action="store_true",
                        help="search the weight update too (the joint space: metric, allocation, update)")
    add_validation_arguments(search, "the front's plan (0 samples: chosen by the first objective)")
    add_model_arguments(search, n_samples=8, seq_len=128, resumable=True, prune_windows=(32, 512))
    search.set_defaults(handler=run)


def _front_zero_shot(args, model, tokenizer, calibration, result, output, title) -> dict:
    """``--zero-shot``: every front plan and baseline plan re-scored on the zero-shot tasks (the
    front's entries get ``"zero_shot"``); returns the baselines' results."""
    if not args.zero_shot:
        return {}
    import contextlib

    from ..optishear import PruningPlan
    from ..pruning.weights import DenseSnapshot

    snapshot = DenseSnapshot.of(model)

    @contextlib.contextmanager
    def pruned(point):
        try:
            PruningPlan.from_dict(point["plan"]).apply(model, calibration)
            yield model
        finally:
            snapshot.restore()

    for point in result.front:
        point["density"] = 1 - point["plan"]["target_sparsity"]
    problem = result.result.problem
    plans = {label: problem.decode(x) for label, x in problem.baseline_vectors().items()}
    baselines = {label: {"plan": plan.to_dict(), "density": 1 - plan.target_sparsity}
                 for label, plan in plans.items()}
    front_zero_shot(args, tokenizer, result.front, pruned, "density", output, title, baselines)
    return {label: point["zero_shot"] for label, point in baselines.items()}


def run(args: argparse.Namespace) -> dict:
    from ..models import load_model
    from ..optishear import search_optishear
    from ..optishear.fitness import check_objectives
    from ..pruning.masks import check_sparsity
    from ..pruning.update import check_update
    from ..pruning.weights import sparsity_report
    from ..search import check_algorithm

    job = Job(args, "search", SETTINGS)
    job.resume_search()
    target = value_or_range(args.target_sparsity, "--target-sparsity")
    objectives = check_objectives(tuple(o.strip() for o in args.objectives.split(",") if o.strip()))
    for value in (target if isinstance(target, tuple) else (target,)):
        check_sparsity(value)
    check_algorithm(args.algorithm, len(objectives))
    if "density" in objectives and not isinstance(target, tuple):
        raise ValueError("the density objective needs --target-sparsity LOW:HIGH to search size")
    check_positive(args, "pop", minimum=2)
    job.model_config()

    check_update(args.update)
    check_validation(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration, prune_calibration = load_search_and_prune_calibration_for(args, tokenizer, model)
    validation = load_validation_for(args, tokenizer)
    job.begin()
    with job.interruptible():
        result = search_optishear(model, calibration, target, objectives, args.layerwise, args.nm,
                                  args.algorithm, args.pop, args.gens, args.seed, args.batch_size,
                                  args.low_fidelity, args.low_fidelity_gens, args.update, args.search_update,
                                  validation, checkpoint_dir=job.output,
                                  config=job.settings, resume=args.resume, trust=args.trust_checkpoint,
                                  verbose=not args.quiet,
                                  workers=args.workers, ray_address=args.ray_address)
    title = f"OptiShear search, target sparsity {args.target_sparsity}"
    baselines_zero_shot = _front_zero_shot(args, model, tokenizer, prune_calibration, result, job.output,
                                           title)
    result.save(job.output, title=title)
    dense = job.perplexity(model, tokenizer)
    result.chosen.apply(model, prune_calibration)
    pruned = job.perplexity(model, tokenizer)
    sparsity = sparsity_report(model)
    report = job.finish(model, tokenizer, {
        **result.to_dict(), "dense_ppl": dense.perplexity, "pruned_ppl": pruned.perplexity,
        "sparsity": sparsity.total, "per_layer_sparsity": sparsity.per_layer,
        "calibration": calibration_settings(args),
        **({"baselines_zero_shot": baselines_zero_shot} if baselines_zero_shot else {})})
    print(f"front of {len(result.front)} plans after {result.n_evaluations} evaluations; chosen: "
          f"{result.chosen.metric.formula()}; ppl {dense.perplexity:.3f} -> {pruned.perplexity:.3f} at "
          f"sparsity {sparsity.total:.4f}; saved to {job.output}")
    return report
