"""``optishear-moo structured``: DarwinLM, attention head groups and MLP channels removed at
searched levels (training-aware by default; checkpointed, resumable)."""

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

SETTINGS = MODEL_SETTINGS + ("compression", "selection", "finetune_tokens", "training", "learning_rate",
                             "mlp_levels", "pop", "offspring", "gens")


def add_parser(commands) -> None:
    structured = commands.add_parser(
        "structured", help="DarwinLM: remove attention head groups and MLP channels at searched levels")
    structured.add_argument("--compression", default="1.5",
                            help="block-weight compression (dense / kept), or LOW:HIGH for a front "
                                 "(default: 1.5)")
    structured.add_argument("--selection", default="training-aware", choices=["training-aware", "one-shot"],
                            help="judge offspring after short fine-tunes, or by one-shot KL")
    structured.add_argument("--finetune-tokens", default="512,1024,2048",
                            help="training-aware stages: fine-tuning tokens per stage; survivors halve "
                                 "per stage down to --pop (default: 512,1024,2048)")
    structured.add_argument("--training", default=None,
                            help="text for the stage fine-tunes (default: the --calibration source)")
    structured.add_argument("--learning-rate", type=float, default=1e-4)
    structured.add_argument("--mlp-levels", type=int, default=None,
                            help="MLP levels (must divide intermediate_size; default: about 10)")
    structured.add_argument("--pop", type=int, default=1, help="parents kept per generation (default: 1)")
    structured.add_argument("--offspring", type=int, default=16, help="offspring per generation")
    structured.add_argument("--gens", type=int, default=None,
                            help="generations (default: 10; with --resume: those of the first run)")
    add_model_arguments(structured, n_samples=8, seq_len=128, resumable=True)
    structured.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from ..darwinlm import LevelDatabase, apply_levels_, halving_stages, search_structured
    from ..darwinlm.database import check_reachable
    from ..data import load_calibration
    from ..models import load_model
    from ..models.sliced import check_structured_model
    from ..search import plot_pareto

    job = Job(args, "structured", SETTINGS)
    job.resume_search()
    target = value_or_range(args.compression, "--compression", example="1.5")
    if not all(value > 1 for value in (target if isinstance(target, tuple) else (target,))):
        raise ValueError(f"--compression must be above 1 (dense / kept weights), got {args.compression!r}")
    stages = None
    if args.selection == "training-aware":
        if isinstance(target, tuple):
            raise ValueError("--selection training-aware needs one --compression; use --selection "
                             "one-shot for a LOW:HIGH front")
        stages = halving_stages(args.finetune_tokens.split(","), args.pop)
    config = job.model_config()
    check_structured_model(config)
    if args.mlp_levels is not None and (args.mlp_levels < 1 or config.intermediate_size % args.mlp_levels):
        raise ValueError(f"--mlp-levels must divide intermediate_size={config.intermediate_size}, "
                         f"got {args.mlp_levels}")
    if isinstance(target, tuple):  # a front may end past its high target; its low end must be reachable
        check_reachable(config, target[0], args.mlp_levels)
        check_reachable(config, target[1], args.mlp_levels, tolerance=float("inf"))
    else:
        check_reachable(config, target, args.mlp_levels)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = load_calibration_for(args, tokenizer, model)
    training = None
    if stages:
        windows = -(-stages[-1].finetune_tokens // args.seq_len)
        training = load_calibration(tokenizer, windows, args.seq_len, args.seed + 1,
                                    args.training or args.calibration)
    job.begin()
    dense = job.perplexity(model, tokenizer)
    dense_parameters = sum(p.numel() for p in model.parameters())
    database = LevelDatabase.build(model, calibration, args.mlp_levels, batch_size=args.batch_size,
                                   progress=not args.quiet)
    with job.interruptible():
        choice = search_structured(model, calibration, target, training, stages, args.pop, args.offspring,
                                   args.gens, args.seed, batch_size=args.batch_size,
                                   learning_rate=args.learning_rate, database=database,
                                   checkpoint_dir=job.output, config=job.settings, resume=args.resume,
                                   trust=args.trust_checkpoint, verbose=not args.quiet,
                                   workers=args.workers, ray_address=args.ray_address)
    search_seconds = job.seconds
    if choice.front and args.zero_shot:
        @contextlib.contextmanager
        def pruned(point):
            yield apply_levels_(copy.deepcopy(model), database, point["levels"])

        for point in choice.front:
            point["kept_share"] = 1 / point["compression"]
        front_zero_shot(args, tokenizer, choice.front, pruned, "kept_share", job.output,
                        "DarwinLM structured pruning")
    apply_levels_(model, database, choice.levels)
    pruned = job.perplexity(model, tokenizer)
    parameters = sum(p.numel() for p in model.parameters())
    if choice.front:
        F = [[point["calibration_kl"], 1 / point["compression"]] for point in choice.front]
        plot_pareto(F, ["kl", "kept_share"], job.output / "pareto", title="DarwinLM structured pruning")
    report = job.finish(model, tokenizer, {
        **choice.to_dict(), "dense_ppl": dense.perplexity, "pruned_ppl": pruned.perplexity,
        "dense_parameters": dense_parameters, "parameters": parameters,
        "calibration": calibration_settings(args), "search_seconds": search_seconds})
    print(f"block-weight compression {choice.compression:.3f}x ({args.selection}); parameters "
          f"{dense_parameters / 1e6:.1f}M -> {parameters / 1e6:.1f}M; ppl {dense.perplexity:.3f} -> "
          f"{pruned.perplexity:.3f}; saved to {job.output / 'model'} (reload with optishear_moo.load_model)")
    return report
