"""``optishear-moo evaluate``: zero-shot accuracy of any model (a directory written by a command,
an embedded name, a .gguf file) through lm-evaluation-harness."""

from __future__ import annotations

from .options import add_model_flags

PAPER_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande", "openbookqa")


def add_parser(commands) -> None:
    evaluate = commands.add_parser("evaluate",
                                   help="zero-shot task accuracy (lm-evaluation-harness, offline)")
    add_model_flags(evaluate)
    evaluate.add_argument("--tasks", default=",".join(PAPER_TASKS),
                          help="comma-separated tasks (default: the 7 of the pruning papers)")
    evaluate.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--output", default=None, help="write the results as JSON to this file")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    evaluate.add_argument("--quiet", action="store_true", help="no progress output")
    evaluate.set_defaults(handler=run)


def run(args) -> dict:
    import json
    from pathlib import Path

    from ..errors import SettingError, param
    from ..evaluation.zero_shot import check_engine, check_tasks, zero_shot
    from ..models import load_model
    from ..models.loading import load_config, resolve_device
    from ..outputs import write_atomically

    check_engine()
    check_tasks(args.tasks)
    resolve_device(args.device)
    for name in ("limit", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SettingError(f"{param(name)} must be at least 1, got {getattr(args, name)}")
    output = Path(args.output) if args.output else None
    if output is not None:
        if output.is_symlink() or (output.exists() and (output.is_dir() or not args.overwrite)):
            raise SettingError(f"{param('output')} {args.output!r} already exists: choose another "
                               f"{param('output')} or pass {param('overwrite')}")
        if not output.parent.is_dir():
            raise SettingError(f"cannot write {args.output!r}: its folder does not exist")
    load_config(args.model)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    result = zero_shot(model, tokenizer, args.tasks, args.limit, args.batch_size)
    width = max(len(name) for name in result["tasks"])
    lines = [f"{'task':<{width}}  {'acc':>13}  {'acc_norm':>13}  {'n':>6}"]
    for name, scores in result["tasks"].items():
        lines.append(f"{name:<{width}}  {scores['acc']:.4f} ±{scores['acc_stderr'] or 0:.3f}  "
                     f"{scores['acc_norm']:.4f} ±{scores['acc_norm_stderr'] or 0:.3f}  {scores['n']:>6}")
    average = result["average"]
    lines.append(f"{'average':<{width}}  {average['acc']:13.4f}  {average['acc_norm']:13.4f}")
    print("\n".join(lines))
    report = {**result, "model": args.model}
    if output is not None:
        write_atomically(output, json.dumps(report, indent=2))
    return report
