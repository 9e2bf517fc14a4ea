"""``optishear-moo prune``: prune with a baseline method and save the model."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .common import (
    Job,
    add_model_arguments,
    calibration_settings,
    load_calibration_for,
    save_atomically,
    versions,
    zero_shot_report,
)

logger = logging.getLogger("optishear_moo")


def add_parser(commands) -> None:
    prune = commands.add_parser("prune", help="prune with a baseline method and save the model")
    prune.add_argument("--method", default="wanda", help="magnitude, wanda, ria or sparsegpt")
    prune.add_argument("--sparsity", type=float, default=0.5, help="target sparsity in [0, 1)")
    prune.add_argument("--nm", default=None, help="N:M semi-structured pattern, e.g. 2:4")
    prune.add_argument("--allocation", default="uniform", help="uniform or owl")
    prune.add_argument("--owl-lambda", type=float, default=0.08)
    prune.add_argument("--update", default="none",
                       help="reconstruct the kept weights: none, obs (SparseGPT's update for the chosen "
                            "mask) or lstsq (per-row least squares); default: none")
    add_model_arguments(prune)
    prune.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from ..models import load_model
    from ..pruning import PruningConfig, parse_nm, prune_model

    config = PruningConfig(args.method, args.sparsity, parse_nm(args.nm), args.allocation,
                           owl_lambda=args.owl_lambda, batch_size=args.batch_size, update=args.update)
    job = Job(args, "prune", ())
    job.resume_from(dict)
    job.model_config()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = load_calibration_for(args, tokenizer, model)
    dense = job.perplexity(model, tokenizer)
    logger.info("dense perplexity %.3f (%d tokens of WikiText-2 test)", dense.perplexity, dense.n_tokens)
    result = prune_model(model, calibration, config=config, progress=not args.quiet)
    pruned = job.perplexity(model, tokenizer)
    logger.info("pruned perplexity %.3f at achieved sparsity %.4f", pruned.perplexity, result.report.total)
    report = {
        "model": args.model,
        "method": config.method,
        "target_sparsity": config.sparsity,
        "nm": f"{config.nm[0]}:{config.nm[1]}" if config.nm else None,
        "allocation": config.allocation,
        "update": config.update,
        "dense_ppl": dense.perplexity,
        "pruned_ppl": pruned.perplexity,
        "evaluation": {k: v for k, v in pruned.to_dict().items() if k not in ("perplexity", "mean_nll")},
        "calibration": calibration_settings(args),
        "prune_seconds": result.seconds,
        "total_seconds": job.seconds,
        "versions": versions(),
        **result.report.to_dict(),
    }
    accuracy = zero_shot_report(args, model, tokenizer)
    if accuracy is not None:
        report["zero_shot"] = accuracy

    def write(directory: Path) -> None:  # the output directory is the model directory
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        (directory / "report.json").write_text(json.dumps(report, indent=2))

    save_atomically(job.output, write)
    print(f"dense ppl {dense.perplexity:.3f} -> pruned ppl {pruned.perplexity:.3f}; "
          f"sparsity {result.report.total:.4f} ({config.method}); saved to {job.output}")
    return report
