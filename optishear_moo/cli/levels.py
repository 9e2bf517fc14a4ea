"""``optishear-moo levels``: EvoPress-style search of per-layer sparsity levels over a database of
pruned weights (by default pruned with whichever of SparseGPT and Wanda prunes this model better at
the target); checkpointed, resumable."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses

from .common import (
    MODEL_SETTINGS,
    Job,
    add_model_arguments,
    add_validation_arguments,
    calibration_settings,
    check_validation,
    front_zero_shot,
    load_search_and_prune_calibration_for,
    load_validation_for,
    value_or_range,
)

SETTINGS = MODEL_SETTINGS + ("sparsity", "method", "update", "step", "levels_each_side", "database_inputs",
                             "prune_samples", "prune_seq_len", "pop", "offspring", "gens", "stages",
                             "validation", "validation_samples", "method_choice")


def add_parser(commands) -> None:
    levels = commands.add_parser("levels",
                                 help="EvoPress: search per-layer sparsity levels over a SparseGPT or "
                                      "Wanda database")
    levels.add_argument("--sparsity", default="0.5",
                        help="mean sparsity of the prunable weights, or LOW:HIGH for a size-vs-quality front")
    levels.add_argument("--method", default="auto",
                        help="how the database prunes each level: sparsegpt, wanda, ria, magnitude, or auto "
                             "(default): whichever of sparsegpt and wanda, pruning uniformly at the target, "
                             "has the lower KL to the dense model on the held-out windows")
    levels.add_argument("--update", default="none",
                        help="weight update for wanda/ria/magnitude levels: none, obs or lstsq")
    levels.add_argument("--step", type=float, default=0.05, help="sparsity between levels (default: 0.05)")
    levels.add_argument("--levels-each-side", type=int, default=3,
                        help="levels below and above the target (default: 3)")
    levels.add_argument("--database-inputs", choices=("pruned", "dense"), default="pruned",
                        help="what each block of the database is pruned from: the blocks before it "
                             "pruned at the target (pruned, default) or the dense model (dense, as "
                             "EvoPress)")
    levels.add_argument("--pop", type=int, default=1, help="parents kept per generation (default: 1)")
    levels.add_argument("--offspring", type=int, default=16, help="offspring per generation (default: 16)")
    levels.add_argument("--gens", type=int, default=None,
                        help="generations (default: 40, as search_levels; with --resume: those of the first "
                             "run)")
    levels.add_argument("--stages", type=int, default=3,
                        help="multi-fidelity stages: survivors halve while the windows scored double "
                             "(default: 3)")
    add_validation_arguments(levels, "between the database's weights at the levels found and the levels "
                                     "pruned again block by block (0 samples: the database's weights, "
                                     "or pruned again with --database-inputs dense)")
    add_model_arguments(levels, n_samples=8, seq_len=128, resumable=True, prune_windows=(32, 512))
    levels.set_defaults(handler=run, method_choice=None)  # --method auto's choice, saved for --resume


def run(args: argparse.Namespace) -> dict:
    from ..evopress import SparsityLevelDatabase, apply_better_, choose_level_method, search_levels
    from ..evopress.database import sparsity_ladder
    from ..evopress.search import GENERATIONS, LEVEL_METHOD_CANDIDATES, level_method_configs
    from ..models import load_model
    from ..pruning.prune import PruningConfig
    from ..pruning.weights import DenseSnapshot, sparsity_report
    from ..search import plot_pareto
    from ..search.levels import fidelity_stages

    job = Job(args, "levels", SETTINGS)
    job.resume_search(default_gens=GENERATIONS)
    target = value_or_range(args.sparsity, "--sparsity")
    if args.method == "auto":
        level_method_configs(target, update=args.update)
    else:
        PruningConfig(args.method, target if not isinstance(target, tuple) else target[0], update=args.update)
    sparsity_ladder(target, args.step, args.levels_each_side)  # checks the ladder before the model loads
    stages = None if isinstance(target, tuple) else fidelity_stages(args.n_samples, args.pop, args.stages)
    check_validation(args)
    job.model_config()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration, prune_calibration = load_search_and_prune_calibration_for(args, tokenizer, model)
    validation = load_validation_for(args, tokenizer)
    if args.method == "auto":
        # held-out text judges, in windows as long and many as the pruning ones: 8 x 128 tokens are
        # too few (on SmolLM2 at 50 % they ranked Wanda above SparseGPT, 32 x 512 did not)
        if validation is None:
            windows, shape, scored = "calibration", [args.n_samples, args.seq_len], calibration
        else:
            windows, shape = "validation", [args.prune_samples, args.prune_seq_len]
            scored = load_validation_for(args, tokenizer, shape)
    job.begin()
    dense = job.perplexity(model, tokenizer)
    if args.method == "auto":
        if not args.quiet:
            print(f"choosing the database's method: {' and '.join(LEVEL_METHOD_CANDIDATES)} prune the model "
                  f"uniformly at the target, scored on {shape[0]} x {shape[1]} {windows} tokens", flush=True)
        args.method_choice = {**choose_level_method(
            model, prune_calibration, target, scored, update=args.update, batch_size=args.batch_size,
            progress=not args.quiet), "windows": windows, "window_shape": shape}
        # what the checkpoint's settings hold, so --resume keeps them (SparseGPT updates itself)
        args.method, args.update = args.method_choice["method"], args.method_choice["update"]
        if not args.quiet:
            scores = ", ".join(f"{name} {kl:.4f}" for name, kl in args.method_choice["kl"].items())
            print(f"database method: {args.method} (KL to dense: {scores})", flush=True)
    database = SparsityLevelDatabase.for_target(
        model, prune_calibration, target, args.method, args.update,
        args.step, args.levels_each_side, args.database_inputs, batch_size=args.batch_size,
        progress=not args.quiet)
    with job.interruptible():
        choice = search_levels(model, calibration, target, database=database, pop_size=args.pop,
                               n_offsprings=args.offspring, n_gen=args.gens, stages=stages, seed=args.seed,
                               batch_size=args.batch_size, checkpoint_dir=job.output, config=job.settings,
                               resume=args.resume, trust=args.trust_checkpoint, verbose=not args.quiet,
                               workers=args.workers, ray_address=args.ray_address)
    search_seconds = job.seconds
    if choice.front and args.zero_shot:
        snapshot = DenseSnapshot.of(model)

        @contextlib.contextmanager
        def pruned(point):
            try:
                yield dataclasses.replace(choice, levels=point["levels"]).apply(model, database)
            finally:
                snapshot.restore()

        for point in choice.front:
            point["density"] = 1 - point["sparsity"]
        front_zero_shot(args, tokenizer, choice.front, pruned, "density", job.output,
                        "EvoPress sparsity levels")
    final = {"weights": "pruned again" if database.inputs_at is None else "database"}
    if validation is not None:
        final = apply_better_(model, choice, database, prune_calibration, validation, args.batch_size)
    elif database.inputs_at is None:
        choice.apply(model, calibration=prune_calibration)  # the allocation found, pruned block by block
    else:
        choice.apply(model, database)  # what the search scored
    pruned = job.perplexity(model, tokenizer)
    report_sparsity = sparsity_report(model)
    if choice.front:
        F = [[point["calibration_kl"], 1 - point["sparsity"]] for point in choice.front]
        plot_pareto(F, ["kl", "density"], job.output / "pareto", title="EvoPress sparsity levels")
    report = job.finish(model, tokenizer, {
        **choice.to_dict(), "dense_ppl": dense.perplexity, "pruned_ppl": pruned.perplexity,
        "sparsity": report_sparsity.total, "per_layer_sparsity": report_sparsity.per_layer,
        "evaluations": choice.n_evaluations, "calibration": calibration_settings(args), "final": final,
        "search_seconds": search_seconds, "method_choice": args.method_choice})
    print(f"levels of {len(choice.levels)} layers ({choice.method}, {choice.n_evaluations} evaluations); ppl "
          f"{dense.perplexity:.3f} -> {pruned.perplexity:.3f} at sparsity {report_sparsity.total:.4f}; "
          f"saved to {job.output / 'model'}")
    return report
