"""Command line: ``optishear-moo prune ...``. Thin: parses arguments and calls the library."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("optishear_moo")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="embedded name, local directory, .gguf file or hub id (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--calibration", default="gutenberg",
                        help="shipped corpus (gutenberg, wikitext2-valid), text file or hf:NAME")
    parser.add_argument("--calibration-sampling", default="random", choices=["random", "cluster"],
                        help="random windows, or EvoP's cluster-based sampling (default: random)")
    parser.add_argument("--n-clusters", type=int, default=None,
                        help="k-means clusters for --calibration-sampling cluster (default: 8)")
    parser.add_argument("--n-samples", type=int, default=32, help="calibration windows (default: 32)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per window (default: 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="calibration windows per forward")
    parser.add_argument("--eval-seq-len", type=int, default=1024,
                        help="WikiText-2 test segment length (default: 1024)")
    parser.add_argument("--eval-segments", default="16",
                        help="segments to evaluate, or 'all' for the full split (default: 16)")
    parser.add_argument("--output", required=True, help="directory for the pruned model and report.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optishear-moo", description="Evolutionary multi-objective pruning of LLMs (pymoo)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    prune = commands.add_parser("prune", help="prune with a baseline method and save the model")
    prune.add_argument("--method", default="wanda", help="magnitude, wanda, ria or sparsegpt")
    prune.add_argument("--sparsity", type=float, default=0.5, help="target sparsity in [0, 1)")
    prune.add_argument("--nm", default=None, help="N:M semi-structured pattern, e.g. 2:4")
    prune.add_argument("--allocation", default="uniform", help="uniform or owl")
    prune.add_argument("--owl-lambda", type=float, default=0.08)
    _add_model_arguments(prune)
    prune.set_defaults(handler=run_prune)

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
    search.add_argument("--resume", action="store_true",
                        help="continue the interrupted search in --output (its settings are reused)")
    _add_model_arguments(search)
    search.set_defaults(handler=run_search_command, n_samples=8, seq_len=128)

    blocks = commands.add_parser("remove-blocks", help="remove whole decoder blocks (EvoP and baselines)")
    blocks.add_argument("--n-remove", default="6",
                        help="blocks to remove, or LOW:HIGH for a size-vs-quality front (evop)")
    blocks.add_argument("--method", default="evop", help="evop, shortgpt, sleb or last (default: evop)")
    blocks.add_argument("--objective", default="kl", help="evop fitness: kl or ppl (default: kl)")
    blocks.add_argument("--pop", type=int, default=16, help="evop population size (default: 16)")
    blocks.add_argument("--gens", type=int, default=10, help="evop generations (default: 10)")
    blocks.add_argument("--resume", action="store_true",
                        help="continue the interrupted evop search in --output (settings are reused)")
    _add_model_arguments(blocks)
    blocks.set_defaults(handler=run_remove_blocks, n_samples=8, seq_len=128)

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
    structured.add_argument("--gens", type=int, default=10, help="generations (default: 10)")
    structured.add_argument("--resume", action="store_true",
                            help="continue the interrupted search in --output (settings are reused)")
    _add_model_arguments(structured)
    structured.set_defaults(handler=run_structured, n_samples=8, seq_len=128)

    finetune = commands.add_parser("finetune", help="post-train a pruned model (optionally distilling)")
    finetune.add_argument("--model", required=True, help="the pruned model: a directory, embedded name, ...")
    finetune.add_argument("--teacher", default=None,
                          help="distill from this (dense) model, e.g. smollm2-135m; default: next-token loss")
    finetune.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    finetune.add_argument("--training", default="gutenberg",
                          help="shipped corpus, text file or hf:NAME (default: %(default)s)")
    finetune.add_argument("--tokens", type=int, default=65536, help="training tokens (default: 65536)")
    finetune.add_argument("--seq-len", type=int, default=512, help="tokens per window (default: 512)")
    finetune.add_argument("--batch-size", type=int, default=4, help="windows per step (default: 4)")
    finetune.add_argument("--learning-rate", type=float, default=1e-4)
    finetune.add_argument("--checkpoint-every", type=int, default=10, help="steps between checkpoints")
    finetune.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    finetune.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--eval-seq-len", type=int, default=1024)
    finetune.add_argument("--eval-segments", default="16", help="WikiText-2 test segments or 'all'")
    finetune.add_argument("--output", required=True, help="directory for the trained model and report.json")
    finetune.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    finetune.add_argument("--resume", action="store_true",
                          help="continue the interrupted training in --output (settings are reused)")
    finetune.add_argument("--quiet", action="store_true", help="no progress output")
    finetune.set_defaults(handler=run_finetune)
    return parser


def _load_calibration(args: argparse.Namespace, tokenizer, model):
    from .data import load_calibration

    return load_calibration(tokenizer, args.n_samples, args.seq_len, args.seed, args.calibration,
                            sampling=args.calibration_sampling, n_clusters=args.n_clusters,
                            model=model, batch_size=args.batch_size, progress=not args.quiet)


def _calibration_settings(args: argparse.Namespace) -> dict:
    return {"source": args.calibration, "sampling": args.calibration_sampling,
            "n_clusters": args.n_clusters, "n_samples": args.n_samples, "seq_len": args.seq_len,
            "seed": args.seed}


def _eval_segments(value: str) -> int | None:
    if value == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"--eval-segments must be a positive integer or 'all', got {value!r}")
    return count


def _prepare_output(output: str, overwrite: bool) -> Path:
    path = Path(output)
    if path.exists() and not overwrite and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"output {output!r} already exists: choose another --output or pass --overwrite")
    return path


def _versions() -> dict:
    import torch
    import transformers

    from . import __version__

    return {"optishear_moo": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def _save_atomically(output: Path, write) -> None:
    """Write into a temporary sibling directory and move it into place only when complete."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        write(staging)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _write_model_and_report(output: Path, model, tokenizer, report: dict) -> None:
    """``output/model`` (staged, moved into place when complete), then ``output/report.json``."""
    _save_atomically(output / "model", lambda directory: (model.save_pretrained(directory),
                                                           tokenizer.save_pretrained(directory)))
    (output / "report.json").write_text(json.dumps(report, indent=2))


def _value_or_range(value: str, flag: str, kind=float, example: str = "0.5"):
    """``"X"`` -> X, ``"LOW:HIGH"`` -> (LOW, HIGH), anything else a ValueError naming the flag."""
    try:
        parts = [kind(v) for v in value.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise ValueError(f"{flag} must be a number (e.g. {example}) or LOW:HIGH, got {value!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


# settings of _add_model_arguments that a resumed run must reuse
_MODEL_SETTINGS = ("model", "device", "dtype", "calibration", "calibration_sampling", "n_clusters",
                   "n_samples", "seq_len", "seed", "batch_size", "eval_seq_len", "eval_segments")
_SEARCH_SETTINGS = _MODEL_SETTINGS + ("target_sparsity", "objectives", "layerwise", "nm", "algorithm",
                                      "pop", "gens", "low_fidelity", "low_fidelity_gens")


def run_search_command(args: argparse.Namespace) -> dict:
    from .evaluation import perplexity
    from .fitness import check_objectives
    from .models import load_model
    from .problems import OptiShearProblem
    from .pruning.masks import check_sparsity
    from .search import (
        FidelitySchedule,
        check_algorithm,
        load_checkpoint,
        make_algorithm,
        reevaluate_at_full_fidelity,
        run_search,
        write_search_outputs,
    )

    output = Path(args.output)
    if args.resume:
        _, state = load_checkpoint(output)
        gens = args.gens
        for key, value in state["config"].items():
            setattr(args, key, value)
        args.gens = gens or args.gens
    else:
        _prepare_output(args.output, args.overwrite)
        args.gens = 10 if args.gens is None else args.gens
    settings = {key: getattr(args, key) for key in _SEARCH_SETTINGS}
    target = _value_or_range(args.target_sparsity, "--target-sparsity")
    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    max_segments = _eval_segments(args.eval_segments)
    if args.gens < 1:
        raise ValueError(f"--gens must be at least 1, got {args.gens}")
    # cheap checks first, so bad input fails before the model loads
    for value in (target if isinstance(target, tuple) else (target,)):
        check_sparsity(value)
    check_algorithm(args.algorithm, len(check_objectives(objectives)))

    started = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = _load_calibration(args, tokenizer, model)
    problem = OptiShearProblem(model, calibration, target, objectives, args.layerwise, args.nm,
                               batch_size=args.batch_size, progress=not args.quiet)
    algorithm = make_algorithm(args.algorithm, problem, args.pop, args.seed)
    if output.exists() and not args.resume and args.overwrite:
        shutil.rmtree(output)
    try:
        schedule = ({"callback": FidelitySchedule(args.low_fidelity, args.low_fidelity_gens)}
                    if args.low_fidelity < 1 else {})
        result = run_search(problem, algorithm, ("n_gen", args.gens), seed=args.seed,
                            checkpoint_dir=output, config=settings, resume=args.resume,
                            verbose=not args.quiet, **schedule)
        if schedule:
            reevaluate_at_full_fidelity(problem, result)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"search interrupted; continue with: optishear-moo search --output "
                                f"{output} --resume") from None
    search_seconds = time.perf_counter() - started

    def evaluate():
        return perplexity(model, tokenizer, args.eval_seq_len, max_segments, progress=not args.quiet)

    report = write_search_outputs(problem, result, output, tokenizer, evaluate)
    report.update({"search_seconds": search_seconds, "settings": settings, "versions": _versions()})
    (output / "report.json").write_text(json.dumps(report, indent=2))
    print(f"front of {len(report['front'])} plans after {report['n_evaluations']} evaluations; chosen: "
          f"{report['chosen_plan']['formula']}; ppl {report['dense_ppl']:.3f} -> "
          f"{report['pruned_ppl']:.3f} at sparsity {report['sparsity']:.4f}; saved to {output}")
    return report


_BLOCK_SETTINGS = _MODEL_SETTINGS + ("n_remove", "method", "objective", "pop", "gens")


def _resume_settings(args: argparse.Namespace) -> None:
    """Reuse the settings of the interrupted run in ``--output`` (or check a fresh output)."""
    from .search import load_checkpoint

    if args.resume:
        for key, value in load_checkpoint(Path(args.output))[1]["config"].items():
            setattr(args, key, value)
    else:
        _prepare_output(args.output, args.overwrite)


def run_remove_blocks(args: argparse.Namespace) -> dict:
    from .block_search import choose_blocks
    from .evaluation import perplexity
    from .models import load_model
    from .pruning.blocks import remove_blocks_

    output = Path(args.output)
    _resume_settings(args)
    settings = {key: getattr(args, key) for key in _BLOCK_SETTINGS}
    n_remove = _value_or_range(args.n_remove, "--n-remove", int, "6")
    max_segments = _eval_segments(args.eval_segments)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = _load_calibration(args, tokenizer, model)
    if output.exists() and not args.resume and args.overwrite:
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    try:
        choice = choose_blocks(model, calibration, n_remove, args.method, args.objective, args.pop,
                               args.gens, args.seed, args.batch_size, checkpoint_dir=output,
                               config=settings, resume=args.resume, verbose=not args.quiet)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"search interrupted; continue with: optishear-moo remove-blocks "
                                f"--output {output} --resume") from None
    search_seconds = time.perf_counter() - started
    dense = perplexity(model, tokenizer, args.eval_seq_len, max_segments, progress=not args.quiet)
    n_blocks = model.config.num_hidden_layers
    remove_blocks_(model, choice.removed_blocks)
    pruned = perplexity(model, tokenizer, args.eval_seq_len, max_segments, progress=not args.quiet)
    report = {**choice.to_dict(), "n_blocks": n_blocks, "dense_ppl": dense.perplexity,
              "pruned_ppl": pruned.perplexity, "calibration": _calibration_settings(args),
              "search_seconds": search_seconds, "settings": settings, "versions": _versions()}
    if choice.front:
        from .plotting import plot_pareto

        F = [[point[args.objective], n_blocks - len(point["removed_blocks"])] for point in choice.front]
        plot_pareto(F, [args.objective, "blocks_kept"], output / "pareto",
                    title="EvoP block removal")
    _write_model_and_report(output, model, tokenizer, report)
    print(f"removed blocks {choice.removed_blocks} ({args.method}); ppl {dense.perplexity:.3f} -> "
          f"{pruned.perplexity:.3f}; {model.config.num_hidden_layers} of {n_blocks} blocks kept; "
          f"saved to {output / 'model'}")
    return report


_STRUCTURED_SETTINGS = _MODEL_SETTINGS + ("compression", "selection", "finetune_tokens", "training",
                                          "learning_rate", "mlp_levels", "pop", "offspring", "gens")


def run_structured(args: argparse.Namespace) -> dict:
    from .data import load_calibration
    from .evaluation import perplexity
    from .models import load_model
    from .pruning.structured import LevelDatabase, apply_levels_
    from .structured_search import halving_stages, search_structured

    output = Path(args.output)
    _resume_settings(args)
    settings = {key: getattr(args, key) for key in _STRUCTURED_SETTINGS}
    target = _value_or_range(args.compression, "--compression", example="1.5")
    if not all(value > 1 for value in (target if isinstance(target, tuple) else (target,))):
        raise ValueError(f"--compression must be above 1 (dense / kept weights), got {args.compression!r}")
    stages = None
    if args.selection == "training-aware":
        if isinstance(target, tuple):
            raise ValueError("--selection training-aware needs one --compression; use --selection "
                             "one-shot for a LOW:HIGH front")
        stages = halving_stages(args.finetune_tokens.split(","), args.pop)
    if min(args.pop, args.offspring, args.gens) < 1:
        raise ValueError("--pop, --offspring and --gens must be at least 1")
    max_segments = _eval_segments(args.eval_segments)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = _load_calibration(args, tokenizer, model)
    training = None
    if stages:
        windows = -(-stages[-1].finetune_tokens // args.seq_len)
        training = load_calibration(tokenizer, windows, args.seq_len, args.seed + 1,
                                    args.training or args.calibration)
    if output.exists() and not args.resume and args.overwrite:
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    dense = perplexity(model, tokenizer, args.eval_seq_len, max_segments, progress=not args.quiet)
    dense_parameters = sum(p.numel() for p in model.parameters())
    database = LevelDatabase.build(model, calibration, args.mlp_levels, batch_size=args.batch_size,
                                   progress=not args.quiet)
    try:
        choice = search_structured(model, calibration, target, training, stages, args.pop, args.offspring,
                                   args.gens, args.seed, batch_size=args.batch_size,
                                   learning_rate=args.learning_rate, database=database,
                                   checkpoint_dir=output, config=settings, resume=args.resume,
                                   verbose=not args.quiet)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"search interrupted; continue with: optishear-moo structured "
                                f"--output {output} --resume") from None
    search_seconds = time.perf_counter() - started
    apply_levels_(model, database, choice.levels)
    pruned = perplexity(model, tokenizer, args.eval_seq_len, max_segments, progress=not args.quiet)
    parameters = sum(p.numel() for p in model.parameters())
    report = {**choice.to_dict(), "dense_ppl": dense.perplexity, "pruned_ppl": pruned.perplexity,
              "dense_parameters": dense_parameters, "parameters": parameters,
              "calibration": _calibration_settings(args), "search_seconds": search_seconds,
              "settings": settings, "versions": _versions()}
    if choice.front:
        from .plotting import plot_pareto

        F = [[point["calibration_kl"], 1 / point["compression"]] for point in choice.front]
        plot_pareto(F, ["kl", "kept_share"], output / "pareto", title="DarwinLM structured pruning")
    _write_model_and_report(output, model, tokenizer, report)
    print(f"block-weight compression {choice.compression:.3f}x ({args.selection}); parameters "
          f"{dense_parameters / 1e6:.1f}M -> {parameters / 1e6:.1f}M; ppl {dense.perplexity:.3f} -> "
          f"{pruned.perplexity:.3f}; saved to {output / 'model'} (reload with optishear_moo.load_model)")
    return report


_FINETUNE_SETTINGS = ("model", "teacher", "temperature", "training", "tokens", "seq_len", "batch_size",
                      "learning_rate", "checkpoint_every", "device", "dtype", "seed", "eval_seq_len",
                      "eval_segments")


def run_finetune(args: argparse.Namespace) -> dict:
    from .data import load_calibration
    from .evaluation import perplexity
    from .finetuning import post_train
    from .models import load_model

    output = Path(args.output)
    checkpoint = output / "checkpoint"
    if args.resume:
        settings_path = checkpoint / "settings.json"
        if not settings_path.is_file():
            raise ValueError(f"{output} holds no interrupted post-training: start without --resume")
        saved = json.loads(settings_path.read_text())
        for key, value in saved["settings"].items():
            setattr(args, key, value)
    else:
        _prepare_output(args.output, args.overwrite)
    settings = {key: getattr(args, key) for key in _FINETUNE_SETTINGS}
    max_segments = _eval_segments(args.eval_segments)
    n_windows = args.tokens // args.seq_len
    if n_windows < 1:
        raise ValueError(f"--tokens {args.tokens} is less than one window of --seq-len {args.seq_len}")
    started = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    teacher = load_model(args.teacher, dtype=args.dtype, device=args.device)[0] if args.teacher else None
    training = load_calibration(tokenizer, n_windows, args.seq_len, args.seed, args.training)
    if args.resume:
        before = saved["ppl_before"]
    else:
        if output.exists() and args.overwrite:
            shutil.rmtree(output)
        before = perplexity(model, tokenizer, args.eval_seq_len, max_segments,
                            progress=not args.quiet).perplexity
        checkpoint.mkdir(parents=True, exist_ok=True)
        (checkpoint / "settings.json").write_text(json.dumps({"settings": settings, "ppl_before": before}))
    try:
        losses = post_train(model, training, args.learning_rate, args.batch_size, teacher,
                            args.temperature, checkpoint_dir=checkpoint,
                            checkpoint_every=args.checkpoint_every,
                            resume=args.resume and (checkpoint / "training_state.pt").exists(),
                            progress=not args.quiet)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"post-training interrupted; continue with: optishear-moo finetune "
                                f"--output {output} --resume") from None
    after = perplexity(model, tokenizer, args.eval_seq_len, max_segments, progress=not args.quiet).perplexity
    report = {"ppl_before": before, "ppl_after": after, "steps": len(losses), "first_loss": losses[0],
              "last_loss": losses[-1], "tokens": training.numel(),
              "loss": "distillation" if teacher is not None else "next-token",
              "seconds": time.perf_counter() - started, "settings": settings, "versions": _versions()}
    _write_model_and_report(output, model, tokenizer, report)
    print(f"post-trained {len(losses)} steps on {training.numel()} tokens ({report['loss']}); ppl "
          f"{before:.3f} -> {after:.3f}; saved to {output / 'model'}")
    return report


def run_prune(args: argparse.Namespace) -> dict:
    from .evaluation import perplexity
    from .models import load_model
    from .pruning import PruningConfig, parse_nm, prune_model

    config = PruningConfig(args.method, args.sparsity, parse_nm(args.nm), args.allocation,
                           owl_lambda=args.owl_lambda, batch_size=args.batch_size)
    max_segments = _eval_segments(args.eval_segments)
    output = _prepare_output(args.output, args.overwrite)
    progress = not args.quiet

    started = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calibration = _load_calibration(args, tokenizer, model)
    evaluate = lambda: perplexity(model, tokenizer, args.eval_seq_len, max_segments,  # noqa: E731
                                  progress=progress)
    dense = evaluate()
    logger.info("dense perplexity %.3f (%d tokens of WikiText-2 test)", dense.perplexity, dense.n_tokens)
    result = prune_model(model, calibration, config=config, progress=progress)
    pruned = evaluate()
    logger.info("pruned perplexity %.3f at achieved sparsity %.4f", pruned.perplexity, result.report.total)
    report = {
        "model": args.model,
        "method": config.method,
        "target_sparsity": config.sparsity,
        "nm": f"{config.nm[0]}:{config.nm[1]}" if config.nm else None,
        "allocation": config.allocation,
        "dense_ppl": dense.perplexity,
        "pruned_ppl": pruned.perplexity,
        "evaluation": {k: v for k, v in pruned.to_dict().items() if k not in ("perplexity", "mean_nll")},
        "calibration": _calibration_settings(args),
        "prune_seconds": result.seconds,
        "total_seconds": time.perf_counter() - started,
        "versions": _versions(),
        **result.report.to_dict(),
    }

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        (directory / "report.json").write_text(json.dumps(report, indent=2))

    _save_atomically(output, write)
    print(f"dense ppl {dense.perplexity:.3f} -> pruned ppl {pruned.perplexity:.3f}; "
          f"sparsity {result.report.total:.4f} ({config.method}); saved to {output}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    if args.quiet:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    try:
        args.handler(args)
    except (ValueError, FloatingPointError) as error:
        print(f"optishear-moo: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        print(f"optishear-moo: {interrupt or 'interrupted; nothing was written'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
