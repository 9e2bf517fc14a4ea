"""``optishear-moo evaluate``: zero-shot accuracy of any model (a directory written by a command,
an embedded name, a .gguf file) through lm-evaluation-harness."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import check_positive, versions

PAPER_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande", "openbookqa")


def add_parser(commands) -> None:
    evaluate = commands.add_parser("evaluate",
                                   help="zero-shot task accuracy (lm-evaluation-harness, offline)")
    evaluate.add_argument("--model", required=True,
                          help="model directory, embedded name, .gguf file or hub id")
    evaluate.add_argument("--tasks", default=",".join(PAPER_TASKS),
                          help="comma-separated tasks (default: the 7 of the pruning papers)")
    evaluate.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    evaluate.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    evaluate.add_argument("--output", default=None, help="write the results as JSON to this file")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    evaluate.add_argument("--quiet", action="store_true", help="no progress output")
    evaluate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> dict:
    from ..evaluation.zero_shot import check_engine, task_configs, zero_shot
    from ..models import load_model

    check_engine()
    task_configs(args.tasks)
    check_positive(args, "limit", "batch_size")
    output = Path(args.output) if args.output else None
    if output is not None:
        if output.exists() and (output.is_dir() or not args.overwrite):
            raise ValueError(f"output {args.output!r} already exists: choose another --output or pass "
                             "--overwrite")
        if not output.parent.exists() or not output.parent.is_dir():
            raise ValueError(f"cannot write {args.output!r}: its folder does not exist")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    result = zero_shot(model, tokenizer, args.tasks, args.limit, args.batch_size)
    report = {**result, "model": args.model, "versions": versions()}
    width = max(len(name) for name in result["tasks"])
    lines = [f"{'task':<{width}}  {'acc':>13}  {'acc_norm':>13}  {'n':>6}"]
    for name, scores in result["tasks"].items():
        lines.append(f"{name:<{width}}  {scores['acc']:.4f} ±{scores['acc_stderr'] or 0:.3f}  "
                     f"{scores['acc_norm']:.4f} ±{scores['acc_norm_stderr'] or 0:.3f}  {scores['n']:>6}")
    average = result["average"]
    lines.append(f"{'average':<{width}}  {average['acc']:13.4f}  {average['acc_norm']:13.4f}")
    print("\n".join(lines))
    if output is not None:
        tmp = output.with_name(output.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(output)
    return report
