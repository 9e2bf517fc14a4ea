"""``optishear-moo prune``: prune with a fixed recipe (magnitude, Wanda, RIA, SparseGPT)."""

from __future__ import annotations

from .options import add_calibration_flags, add_model_flags, add_output_flags


def add_parser(commands) -> None:
    prune = commands.add_parser("prune", help="prune with a baseline method and save the model")
    prune.add_argument("--method", default="wanda",
                       help="magnitude, wanda, ria or sparsegpt (default: wanda)")
    prune.add_argument("--sparsity", type=float, default=0.5, help="target sparsity in [0, 1) (default: 0.5)")
    prune.add_argument("--nm", default=None, help="N:M semi-structured pattern, e.g. 2:4")
    prune.add_argument("--allocation", default="uniform", help="uniform or owl (default: uniform)")
    prune.add_argument("--owl-lambda", type=float, default=0.08)
    prune.add_argument("--update", default="none",
                       help="reconstruct the kept weights: none, obs (SparseGPT's update for the chosen "
                            "mask) or lstsq (per-row least squares); default: none")
    add_model_flags(prune)
    add_calibration_flags(prune, n_samples=32, seq_len=512)
    add_output_flags(prune, search=False)
    prune.set_defaults(handler=run)


def run(args) -> dict:
    from ..data import CalibrationConfig
    from ..pruning import PruningConfig, prune_model
    from .job import Job
    from .options import config_from

    config = config_from(args, PruningConfig)
    calibration = config_from(args, CalibrationConfig)
    with Job(args, "prune", config, calibration) as job:
        model, tokenizer = job.load_model()
        windows = job.windows(model, tokenizer).search
        dense = job.perplexity(model, tokenizer)
        result = prune_model(model, windows, config=config, progress=not args.quiet)
        pruned = job.perplexity(model, tokenizer)
        report = job.save(model, tokenizer, {"method": config.method, **config.to_dict()}, {
            "dense_ppl": dense.perplexity, "pruned_ppl": pruned.perplexity, "prune_seconds": result.seconds,
            "evaluation": {k: v for k, v in pruned.to_dict().items() if k not in ("perplexity", "mean_nll")},
            **result.report.to_dict()})
    print(f"prune: ppl {dense.perplexity:.3f} -> {pruned.perplexity:.3f}, sparsity {result.report.total:.4f} "
          f"({config.method}); saved to {job.output / 'model'}")
    return report
