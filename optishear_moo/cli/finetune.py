"""``optishear-moo finetune``: post-train a pruned model, optionally distilling from the dense one
(checkpointed every ``--checkpoint-every`` steps, resumable)."""

from __future__ import annotations

import argparse
import json
import shutil

from .common import Job, add_output_arguments, add_zero_shot_arguments

SETTINGS = ("model", "teacher", "temperature", "training", "tokens", "seq_len", "batch_size",
            "learning_rate", "checkpoint_every", "device", "dtype", "seed", "eval_seq_len", "eval_segments")


def add_parser(commands) -> None:
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
    finetune.add_argument("--resume", action="store_true",
                          help="continue the interrupted training in --output (settings are reused)")
    add_zero_shot_arguments(finetune)
    add_output_arguments(finetune)
    finetune.set_defaults(handler=run)


def _saved(checkpoint) -> dict:
    path = checkpoint / "settings.json"
    if not path.is_file():
        raise ValueError(f"{checkpoint.parent} holds no interrupted post-training: start without --resume")
    return json.loads(path.read_text())


def run(args: argparse.Namespace) -> dict:
    from ..data import load_calibration
    from ..finetuning import post_train
    from ..models import load_model

    job = Job(args, "finetune", SETTINGS)
    checkpoint = job.output / "checkpoint"
    job.resume_from(lambda: _saved(checkpoint)["settings"])
    n_windows = args.tokens // args.seq_len
    if n_windows < 1:
        raise ValueError(f"--tokens {args.tokens} is less than one window of --seq-len {args.seq_len}")
    if args.teacher is not None and args.temperature <= 0:
        raise ValueError(f"--temperature must be positive, got {args.temperature}")
    job.model_config()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    teacher = load_model(args.teacher, dtype=args.dtype, device=args.device)[0] if args.teacher else None
    training = load_calibration(tokenizer, n_windows, args.seq_len, args.seed, args.training)
    if args.resume:
        before = _saved(checkpoint)["ppl_before"]
    else:
        job.begin()
        before = job.perplexity(model, tokenizer).perplexity
        checkpoint.mkdir(parents=True, exist_ok=True)
        saved = {"settings": job.settings, "ppl_before": before}
        (checkpoint / "settings.json").write_text(json.dumps(saved))
    with job.interruptible("post-training"):
        losses = post_train(model, training, args.learning_rate, args.batch_size, teacher,
                            args.temperature, checkpoint_dir=checkpoint,
                            checkpoint_every=args.checkpoint_every,
                            resume=args.resume and (checkpoint / "training_state.pt").exists(),
                            progress=not args.quiet)
    after = job.perplexity(model, tokenizer).perplexity
    report = job.finish(model, tokenizer, {
        "ppl_before": before, "ppl_after": after, "steps": len(losses), "first_loss": losses[0],
        "last_loss": losses[-1], "tokens": training.numel(),
        "loss": "distillation" if teacher is not None else "next-token"})
    shutil.rmtree(checkpoint, ignore_errors=True)  # the finished model replaces the training state
    print(f"post-trained {len(losses)} steps on {training.numel()} tokens ({report['loss']}); ppl "
          f"{before:.3f} -> {after:.3f}; saved to {job.output / 'model'}")
    return report
