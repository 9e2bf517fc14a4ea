"""``optishear-moo remove-blocks``: remove whole decoder blocks (EvoP and the baselines)."""

from __future__ import annotations

import argparse
import contextlib
import copy

from .common import (
    MODEL_SETTINGS,
    Job,
    add_model_arguments,
    calibration_settings,
    front_zero_shot,
    load_calibration_for,
    value_or_range,
)

SETTINGS = MODEL_SETTINGS + ("n_remove", "method", "objective", "pop", "gens")


def add_parser(commands) -> None:
    blocks = commands.add_parser("remove-blocks", help="remove whole decoder blocks (EvoP and baselines)")
    blocks.add_argument("--n-remove", default="6",
                        help="blocks to remove, or LOW:HIGH for a size-vs-quality front (evop)")
    blocks.add_argument("--method", default="evop", help="evop, shortgpt, sleb or last (default: evop)")
    blocks.add_argument("--objective", default="kl", help="evop fitness: kl or ppl (default: kl)")
    blocks.add_argument("--pop", type=int, default=16, help="evop population size (default: 16)")
    blocks.add_argument("--gens", type=int, default=None,
                        help="evop generations (default: 10; with --resume: those of the first run)")
    add_model_arguments(blocks, n_samples=8, seq_len=128, resumable=True)
    blocks.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from ..evop import BLOCK_METHODS, choose_blocks, remove_blocks_
    from ..evop.blocks import check_n_remove
    from ..evop.fitness import check_block_objective
    from ..models import load_model
    from ..search import plot_pareto

    job = Job(args, "remove-blocks", SETTINGS)
    job.resume_search()
    n_remove = value_or_range(args.n_remove, "--n-remove", int, "6")
    if args.method not in BLOCK_METHODS:
        raise ValueError(f"unknown block-removal method {args.method!r}: choose one of "
                         f"{', '.join(BLOCK_METHODS)}")
    if isinstance(n_remove, tuple) and args.method != "evop":
        raise ValueError("a --n-remove LOW:HIGH range needs method evop (heuristics remove a fixed count)")
    check_block_objective(args.objective)
    n_blocks = job.model_config().num_hidden_layers
    for count in n_remove if isinstance(n_remove, tuple) else (n_remove,):
        check_n_remove(count, n_blocks)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = load_calibration_for(args, tokenizer, model)
    job.begin()
    with job.interruptible():
        choice = choose_blocks(model, calibration, n_remove, args.method, args.objective, args.pop,
                               args.gens, args.seed, args.batch_size, checkpoint_dir=job.output,
                               config=job.settings, resume=args.resume, trust=args.trust_checkpoint,
                               verbose=not args.quiet,
                               workers=args.workers, ray_address=args.ray_address)
    search_seconds = job.seconds
    if choice.front and args.zero_shot:
        @contextlib.contextmanager
        def pruned(point):
            yield remove_blocks_(copy.deepcopy(model), point["removed_blocks"])

        for point in choice.front:
            point["blocks_kept"] = model.config.num_hidden_layers - len(point["removed_blocks"])
        front_zero_shot(args, tokenizer, choice.front, pruned, "blocks_kept", job.output,
                        "EvoP block removal")
    dense = job.perplexity(model, tokenizer)
    n_blocks = model.config.num_hidden_layers
    remove_blocks_(model, choice.removed_blocks)
    pruned = job.perplexity(model, tokenizer)
    if choice.front:
        F = [[point[args.objective], n_blocks - len(point["removed_blocks"])] for point in choice.front]
        plot_pareto(F, [args.objective, "blocks_kept"], job.output / "pareto", title="EvoP block removal")
    report = job.finish(model, tokenizer, {
        **choice.to_dict(), "n_blocks": n_blocks, "dense_ppl": dense.perplexity,
        "pruned_ppl": pruned.perplexity, "calibration": calibration_settings(args),
        "search_seconds": search_seconds})
    print(f"removed blocks {choice.removed_blocks} ({args.method}); ppl {dense.perplexity:.3f} -> "
          f"{pruned.perplexity:.3f}; {model.config.num_hidden_layers} of {n_blocks} blocks kept; "
          f"saved to {job.output / 'model'}")
    return report
